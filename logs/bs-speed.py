"""Check (not part of the product, not a test): training-step throughput of ResNet-50 + train.py's Ranger at 128 px,
batch 64 against batch 32, side by side in one run (plan k, logs/PLAN-ranger-bs32-seeds234-2026-12-01k.txt).
Synthetic input, channels_last, the recipe's flags; rounds alternate the two batch sizes over the same number of
images, so machine noise hits both alike. Prints img/s per round and the ratio bs32/bs64.

    python logs/bs-speed.py --rounds 3 --images 512      # from the repository root; ~3 min on a 2-core CPU
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


def steps(net, opt, batch, n, loss_fn):
    images = torch.randn(batch, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    start = time.perf_counter()
    for _ in range(n):
        loss = loss_fn(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--images", type=int, default=512, help="images per batch size per round")
    cli = p.parse_args()
    args = train.get_args(["--data", "x", "--opt", "ranger", "--weight-decay", "0.01", "--zero-init-residual",
                           "--channels-last"])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    runs = {}
    for batch in (64, 32):
        net = train.build_model(args, 10, torch.device("cpu"), 1).train()
        opt = train.build_optimizer(args, net, 4e-3)
        steps(net, opt, batch, 2, loss_fn)  # warm-up: allocator, oneDNN kernels
        runs[batch] = (net, opt)
    ratios = []
    for r in range(cli.rounds):
        speed = {b: steps(*runs[b], b, cli.images // b, loss_fn) for b in (64, 32)}
        ratios.append(speed[32] / speed[64])
        print(f"round {r}: bs64 {speed[64]:.1f} img/s  bs32 {speed[32]:.1f} img/s  ratio {ratios[-1]:.3f}", flush=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}: bs32/bs64 img/s ratio, mean of rounds "
          f"{sum(ratios) / len(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
