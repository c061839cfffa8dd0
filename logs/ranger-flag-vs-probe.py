"""Check (not part of the product, not a test): train.py's --opt ranger --decay flat-cos against logs/ranger-probe.py,
which made the Ranger figures in BENCHMARKS.md. Same small conv net, same batches, 50 steps, each with its own LR
schedule; then both schedules over the 735 steps of a 5-epoch Imagenette run at peak 4e-3.

    python logs/ranger-flag-vs-probe.py      # from the repository root; a few seconds on a CPU
"""
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402

spec = importlib.util.spec_from_file_location("probe", os.path.join(ROOT, "logs", "ranger-probe.py"))
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 4))


torch.set_num_threads(1)
args = train.get_args(["--data", "x", "--opt", "ranger", "--weight-decay", "0.01"])
a, b = make(), make()
opt_a, opt_b = train.build_optimizer(args, a, 0.004), probe.build_ranger(args, b, 0.004)
g = torch.Generator().manual_seed(1)
total = 50
for step in range(total):
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    for net, opt, lr in ((a, opt_a, train.lr_at(step, total, 0, 0.004, "flat-cos")),
                         (b, opt_b, probe.lr_flat_cos(step, total, 0, 0.004))):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    if step + 1 in (6, 7, 12, 37, 38, 50):
        d = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        print(f"step {step + 1}: max |w_train - w_probe| = {d:.3g}")
total, peak = 735, 0.004
ours = [train.lr_at(s, total, 0, peak, "flat-cos") for s in range(total)]
theirs = [probe.lr_flat_cos(s, total, 0, peak) for s in range(total)]
diff = max(abs(p - q) for p, q in zip(ours, theirs))
print(f"LR over {total} steps: max |train - probe| = {diff:.3g} ({diff / peak:.2%} of the peak {peak})")
print(f"first step below the peak: train {next(s for s in range(total) if ours[s] < peak)}, "
      f"probe {next(s for s in range(total) if theirs[s] < peak)}; last LR: train {ours[-1]:.3g}, probe {theirs[-1]:.3g}")
