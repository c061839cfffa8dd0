"""Probe (not part of the product): train.py with progressive resizing, FFCV-style, done on the batch.

Each epoch trains at one resolution, rising linearly from --start-res at the first epoch to --train-res at the last
(rounded to a multiple of 8): with --start-res 96 and 5 epochs at 128 px, 96, 104, 112, 120, 128. The loader still
crops at --train-res; this wrapper shrinks each uint8 batch (bilinear, antialiased) before train.py's train_step, so
train.py itself is unchanged. Evaluation stays at --val-res.

    PYTHONPATH=. python logs/progressive-resize-probe.py --start-res 96 <train.py flags>
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import train


def res_for_epoch(epoch, epochs, start, full):
    """Linear from start (first epoch) to full (last epoch), rounded to a multiple of 8."""
    frac = epoch / max(epochs - 1, 1)
    return int(round((start + (full - start) * frac) / 8)) * 8


def main(argv):
    parser = argparse.ArgumentParser(description="progressive-resizing probe; other flags go to train.py")
    parser.add_argument("--start-res", type=int, required=True, help="the first epoch's training size")
    opts, rest = parser.parse_known_args(argv)
    start = opts.start_res
    train_step, seen = train.train_step, set()

    def progressive_train_step(run, images, labels):
        epoch = run["step"] // run["steps_per_epoch"]
        res = res_for_epoch(epoch, run["args"].epochs, start, run["args"].train_res)
        if res not in seen:
            seen.add(res)
            print(f"progressive resizing: epoch {epoch + 1} trains at {res} px", flush=True)
        if res != images.shape[-1]:
            images = F.interpolate(images.float(), size=(res, res), mode="bilinear", antialias=True, align_corners=False)
            images = images.round_().clamp_(0, 255).to(torch.uint8)
        return train_step(run, images, labels)

    train.train_step = progressive_train_step  # train_one_epoch looks train_step up in train's globals at each call
    train.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
