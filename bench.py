"""Throughput benchmark: prints one table (img/s, peak memory) for the model step and the input pipelines.

Needs torch, torchvision, pillow and the files beside it. Sections:

    python bench.py pipeline --images ../shared/data/imagenet-samples      # CPU: per-worker img/s, ours vs torchvision
    python bench.py synthetic                  # GPU: model step, fp32/tf32, bf16 NCHW, bf16 channels_last, + compile
    python bench.py jpeg --images DIR --workers 15   # GPU: real JPEGs end to end, CPU decode path and GPU decode path
    python bench.py reference --images DIR --vision third_party/vision_ref   # torchvision's references/classification

`pipeline` times one data-loading worker (one core) on the same files in one run, alternating the two pipelines
in rounds so that machine noise hits both alike, and reports the ratio. The GPU sections time `--steps` training
steps after `--warmup` steps at batch 256, 224 px (and `--res 176`). `jpeg` and `reference` repeat the sample
photos into an ImageNet-layout folder of links (`--repeat`) so an epoch is long enough to measure.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import time

import torch

import augment
import data
import train


def table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)), flush=True)


# ------------------------------------------------------------------------------------------ CPU pipeline

def torchvision_pipeline(size, auto_augment):
    """torchvision's reference preset (ClassificationPresetTrain, PIL backend) for the same crop, as its workers run it."""
    import torchvision.transforms as T
    steps = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
    if auto_augment:
        steps.append(T.TrivialAugmentWide())
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)]
    t = T.Compose(steps)
    return lambda path: t(data.Image.open(path).convert("RGB"))


def our_pipeline(size, auto_augment):
    t = data.train_transform(size, "ta_wide" if auto_augment else "none", random_erase=0.0)
    return lambda path: t(data.Image.open(path))


def bench_pipeline(args):
    torch.set_num_threads(1)  # one worker = one core
    files = sorted(f for f in glob.glob(os.path.join(args.images, "**", "*"), recursive=True) if os.path.isfile(f))
    rows = []
    for size in args.res:
        for aa in (False, True):
            pipes = {"torchvision": torchvision_pipeline(size, aa), "ours": our_pipeline(size, aa)}
            seconds = dict.fromkeys(pipes, 0.0)
            for _ in range(args.rounds):
                for name, pipe in pipes.items():
                    start = time.perf_counter()
                    for f in files:
                        pipe(f)
                    seconds[name] += time.perf_counter() - start
            rate = {k: args.rounds * len(files) / v for k, v in seconds.items()}
            rows.append({"pipeline": f"RRC+flip{'+TA' if aa else ''} {size}px", "torchvision img/s": f"{rate['torchvision']:.0f}",
                         "ours img/s": f"{rate['ours']:.0f}", "ours/torchvision": f"{rate['ours'] / rate['torchvision']:.2f}x"})
    print(f"one worker, {len(files)} files x {args.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} cores")
    table(rows, ["pipeline", "torchvision img/s", "ours img/s", "ours/torchvision"])


# ------------------------------------------------------------------------------------------ GPU model step

def step_fn(args, res, amp, channels_last, compile_mode, device):
    targs = train.get_args(["--data", "synthetic", "--amp", amp, "--train-res", str(res), "--batch-size", str(args.batch),
                            "--no-ema", "--device", device.type] + (["--channels-last"] if channels_last else ["--no-channels-last"]))
    net = train.build_model(targs, 1000, device, 1)
    run_net = torch.compile(net, mode=compile_mode) if compile_mode else net
    optimizer = train.build_optimizer(targs, net, 0.1)
    mixer = augment.MixupCutmix(1000, 0.2, 1.0, 0.5, 0.1)

    def step(images, labels):
        images = data.to_device_normalized(images, device, channels_last)
        images, targets = mixer(images, labels.to(device, non_blocking=True))
        with train.autocast(targs, device):
            loss = augment.soft_cross_entropy(run_net(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def timed(step, batches, warmup, steps, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it)[:2])
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(*next(it)[:2])
    loss.item()
    sync()
    seconds = time.perf_counter() - start
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "-"
    return steps * args_batch(batches) / seconds, mem


def args_batch(batches):
    return batches.batch_size


class Repeat:
    """The same device batch forever (synthetic data: the model's own speed)."""

    def __init__(self, batch_size, res, device):
        self.batch_size = batch_size
        self.images = torch.randint(0, 256, (batch_size, 3, res, res), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, 1000, (batch_size,), device=device)

    def __iter__(self):
        while True:
            yield self.images, self.labels


# --modes key: (row name, autocast, channels_last, torch.compile mode or None)
SYNTHETIC_MODES = {"fp32": ("fp32/tf32 eager", "off", False, None), "bf16": ("bf16 NCHW eager", "bf16", False, None),
                   "bf16-cl": ("bf16 channels_last eager", "bf16", True, None),
                   "compile": ("bf16 channels_last compile", "bf16", True, "default"),
                   "max-autotune": ("bf16 channels_last compile max-autotune-no-cudagraphs", "bf16", True,
                                    "max-autotune-no-cudagraphs")}


def bench_synthetic(args, device):
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    for res in args.res:
        for key in args.modes:
            name, amp, cl, mode = SYNTHETIC_MODES[key]
            if mode and args.no_compile:
                continue
            rate, mem = timed(step_fn(args, res, amp, cl, mode, device), Repeat(args.batch, res, device), args.warmup, args.steps, device)
            rows.append({"data": "synthetic", "mode": name, "res": res, "batch": args.batch, "img/s": f"{rate:.0f}", "peak mem": mem})
            torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


# ------------------------------------------------------------------------------------------ real JPEGs

def repeated_folder(images, repeat, root):
    """An ImageNet-layout folder of links to `images`, each file `repeat` times, in train/ and val/."""
    if os.path.exists(os.path.join(root, "COMPLETE")):
        return root
    for split, times in (("train", repeat), ("val", 1)):
        for cls in sorted(os.listdir(images)):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for f in sorted(os.listdir(os.path.join(images, cls))):
                for k in range(times):
                    link = os.path.join(root, split, cls, f"{k}_{f}")
                    if not os.path.exists(link):
                        os.symlink(os.path.abspath(os.path.join(images, cls, f)), link)
    open(os.path.join(root, "COMPLETE"), "w").close()
    return root


def bench_jpeg(args, device):
    root = repeated_folder(args.images, args.repeat, args.link_dir)
    torch.backends.cudnn.benchmark = True
    rows = []
    for res in args.res:
        for decode in ("cpu", "gpu"):
            targs = train.get_args(["--data", root, "--train-res", str(res), "--batch-size", str(args.batch), "--workers",
                                    str(args.workers), "--decode", decode, "--device", device.type])
            _, loader, sampler, _ = data.build_loaders(targs, 0, 1, device)
            gpu_aug = data.train_transform(res, targs.auto_augment, targs.random_erase, crop=False)
            base = step_fn(args, res, "bf16" if device.type == "cuda" else "off", device.type == "cuda", None, device)

            def step(images, labels):
                if decode == "gpu":
                    images = data.decode_batch_on_device(images, res, device, gpu_aug)
                return base(images, labels)
            rate, mem = timed(step, loader, args.warmup, args.steps, device)
            rows.append({"data": f"JPEG, {decode} decode, {args.workers} workers", "mode": "bf16 channels_last eager",
                         "res": res, "batch": args.batch, "img/s": f"{rate:.0f}", "peak mem": mem})
    return rows


def bench_reference(args, device):
    """torchvision's references/classification/train.py with --amp on the same folder, batch and device."""
    root = repeated_folder(args.images, args.repeat, args.link_dir)
    cmd = [sys.executable, os.path.join(args.vision, "train.py"), "--data-path", root, "--model", "resnet50", "--amp",
           "--batch-size", str(args.batch), "--workers", str(args.workers), "--epochs", "1", "--print-freq", "10",
           "--train-crop-size", str(args.res[0]), "--device", device.type, "--output-dir", ""]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    # Its log prints, every --print-freq steps, "img/s" of the last step's compute alone (its clock starts after the
    # batch arrives) and "time", the mean wall time of the last 20 steps including the wait for data. We report the
    # second, end to end like ours, and show the first beside it. The first two prints (warmup) are skipped.
    steps = [float(x) for x in re.findall(r"Epoch: \[\d+\]\s+\[\s*\d+/\d+\].*? time: ([0-9.]+)", out)][2:]
    compute = [float(x) for x in re.findall(r"img/s: ([0-9.]+)", out)][2:]
    rate = args.batch * len(steps) / sum(steps) if steps else float("nan")
    own = sum(compute) / len(compute) if compute else float("nan")
    return [{"data": f"JPEG, torchvision reference, {args.workers} workers",
             "mode": f"--amp (fp16 autocast), NCHW; its own img/s (compute only) {own:.0f}",
             "res": args.res[0], "batch": args.batch, "img/s": f"{rate:.0f}", "peak mem": "-"}]


def main():
    p = argparse.ArgumentParser(description="ResNet-50 throughput table")
    p.add_argument("what", choices=["pipeline", "synthetic", "jpeg", "reference", "all"], help="which section(s)")
    p.add_argument("--images", default="../shared/data/imagenet-samples", help="folder of <class>/<image> files")
    p.add_argument("--res", type=int, nargs="+", default=[224, 176], help="training resolutions")
    p.add_argument("--batch", type=int, default=256, help="batch size for the GPU sections")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first (cudnn.benchmark, compile)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="loader workers (jpeg)")
    p.add_argument("--repeat", type=int, default=40, help="times each sample photo appears in the made-up epoch")
    p.add_argument("--link-dir", default="third_party/bench_data", help="where the repeated folder of links goes")
    p.add_argument("--vision", default="third_party/vision_ref", help="torchvision's references/classification folder")
    p.add_argument("--rounds", type=int, default=3, help="pipeline: alternating rounds over the files")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--modes", nargs="+", default=list(SYNTHETIC_MODES), choices=list(SYNTHETIC_MODES),
                   help="synthetic: which rows (compile ones take a minute or more each to compile)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for GPU sections")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.what == "pipeline":
        return bench_pipeline(args)
    rows = []
    for what, fn in (("synthetic", bench_synthetic), ("jpeg", bench_jpeg), ("reference", bench_reference)):
        if args.what in (what, "all"):
            rows += fn(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    table(rows, ["data", "mode", "res", "batch", "img/s", "peak mem"])


if __name__ == "__main__":
    main()
