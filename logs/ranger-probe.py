"""Probe (not part of the product): train.py with Ranger and the LR shape of the imagenette leaderboard's script.

Ranger is RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond") wrapped in Lookahead
(Zhang et al. 2019: every k steps the slow weights move a fraction alpha towards the fast ones, and the fast weights
restart from there). fastai's `ranger` (what `train_imagenette.py` uses, theirs) is Lookahead(k=6, alpha=0.5) around
RAdam with decoupled weight decay; the script passes mom 0.9, sqr_mom 0.99, eps 1e-6, wd 1e-2, lr 1e-2 at batch 64,
and trains with `fit_flat_cos`: flat at the peak for 75% of the iterations, then half a cosine down to peak / 1e5,
no warmup (RAdam's rectification stands in for one).
Here: torch.optim.RAdam(betas=(--momentum, 0.99), eps=1e-6, decoupled_weight_decay=True), weight decay on conv/fc
weights only (train.py's groups; fastai also skips BatchNorm and biases by default), Lookahead as a post-step hook.
train.py itself is unchanged: this wrapper replaces train.build_optimizer and train.lr_at. Not for resuming: the
Lookahead slow weights are not in the optimizer's state_dict.

    PYTHONPATH=. python logs/ranger-probe.py <train.py flags>   # --lr 0.16 at --batch-size 64 is fastai's 1e-2
"""
import math
import sys

import torch

import train

LOOKAHEAD_K, LOOKAHEAD_ALPHA = 6, 0.5  # fastai's Lookahead defaults
FLAT_FRACTION, DIV_FINAL = 0.75, 1e5  # fastai's fit_flat_cos defaults


def add_lookahead(optimizer, k=LOOKAHEAD_K, alpha=LOOKAHEAD_ALPHA):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    slow = [p.detach().clone() for p in params]
    count = [0]

    def after_step(opt, args, kwargs):
        count[0] += 1
        if count[0] % k:
            return
        with torch.no_grad():
            for p, s in zip(params, slow):
                s.add_(p - s, alpha=alpha)  # slow += alpha * (fast - slow)
                p.copy_(s)  # fast restarts from the slow weights

    optimizer.register_step_post_hook(after_step)
    return optimizer


def build_ranger(args, net, peak_lr):
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    radam = torch.optim.RAdam(groups, lr=peak_lr, betas=(args.momentum, 0.99), eps=1e-6, decoupled_weight_decay=True)
    return add_lookahead(radam)


def lr_flat_cos(step, total_steps, warmup_steps, peak_lr, decay=None):
    flat_end = round(FLAT_FRACTION * total_steps)
    if step < flat_end:
        return peak_lr
    progress = min((step - flat_end) / max(total_steps - 1 - flat_end, 1), 1.0)
    low = peak_lr / DIV_FINAL
    return low + 0.5 * (peak_lr - low) * (1.0 + math.cos(math.pi * progress))


if __name__ == "__main__":
    train.build_optimizer = build_ranger
    train.lr_at = lr_flat_cos
    train.main(sys.argv[1:])
