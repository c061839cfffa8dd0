"""Probe (not part of the product): train.py's --opt ranger with Lookahead switched off, i.e. plain RAdam (Liu et al.
2020) with Ranger's betas (--momentum, 0.99), eps 1e-6 and decoupled weight decay. It asks which half of Ranger pays
on Imagenette (plan m, logs/PLAN-bs16-radam-bs64-2026-12-01m.txt).

How: train.Ranger is replaced by a subclass whose Lookahead period k is 10**12 steps, so the slow weights are never
pulled back and the fast weights are never reset: each step is torch.optim.RAdam's own step (the subclass still
keeps an unused copy of the weights as "slow" state). train.py itself is unchanged.

    PYTHONPATH=. python logs/radam-no-lookahead-probe.py <train.py flags, with --opt ranger>
"""
import sys

import train


class RAdamNoLookahead(train.Ranger):
    def __init__(self, params, k=6, alpha=0.5, **radam_args):
        super().__init__(params, k=10**12, alpha=alpha, **radam_args)  # a period no run reaches: Lookahead never acts


if __name__ == "__main__":
    train.Ranger = RAdamNoLookahead
    print("probe: Ranger's Lookahead off (k = 10**12): plain RAdam", flush=True)
    train.main(sys.argv[1:])
