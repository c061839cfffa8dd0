"""Probe (not part of the product): train.py with fastai's "flat then cosine" LR shape after the recipe's warmup.

fastai's fit_flat_cos (what the imagenette leaderboard's train_imagenette.py uses) holds the peak LR for the first
72% of training, then anneals it to 0 by half a cosine. Its entries use Ranger, which needs no warmup; with SGD the
recipe's linear warmup stays (a 0.25-epoch warmup broke the SGD run, BENCHMARKS "Warmup length"), so the shape here
is: linear warmup over --warmup-epochs, flat at the peak until 72% of the steps, cosine to 0 at the last step.
train.py itself is unchanged: this wrapper replaces train.lr_at, which train_step looks up at every step.

    PYTHONPATH=. python logs/flat-cos-probe.py <train.py flags>
"""
import math
import sys

import train

FLAT_FRACTION = 0.72  # fastai's fit_flat_cos default pct_start


def lr_flat_cos(step, total_steps, warmup_steps, peak_lr, decay=None):
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    flat_end = max(round(FLAT_FRACTION * total_steps), warmup_steps)
    if step < flat_end:
        return peak_lr
    progress = min((step - flat_end) / max(total_steps - flat_end, 1), 1.0)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


if __name__ == "__main__":
    train.lr_at = lr_flat_cos
    train.main(sys.argv[1:])
