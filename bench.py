"""Throughput benchmark: prints one table (img/s, peak memory) for the model step and the input pipelines.

Needs torch, torchvision, pillow and the files beside it. Sections:

    python bench.py pipeline --images ../shared/data/imagenet-samples  # CPU: a worker's img/s, ours vs timm's
                                                            # and torchvision's; the device augmentation's ms
    python bench.py synthetic                  # GPU: model step, fp32/tf32, bf16 NCHW, bf16 channels_last, + compile
    python bench.py jpeg --images DIR --workers 15   # GPU: real JPEGs end to end through train.py's loader
    python bench.py reference --images DIR --vision third_party/vision_ref   # torchvision's references/classification

`pipeline` times one data-loading worker (one core) on the same files in one run, alternating the pipelines in
rounds so that machine noise hits all alike, and reports the ratios: ours only decodes, crops and flips (the
augmentation runs batched on the device), the peers augment in the worker; run it where timm is installed for the
A3 row. It then times train.py's device augmentation of a batch of 256 on the CPU. The GPU sections time `--steps`
training steps after `--warmup` steps at batch 256, 224 px (and `--res 176`). `jpeg` and `reference` repeat the sample
photos into an ImageNet-layout folder of links (`--repeat`; by default as often as the timed steps need). `jpeg` warms
the model up on a synthetic batch before its loader starts and times 10 x workers steps after skipping 2 x workers,
so that batches the workers queued early cannot pass for their steady rate; it also times the loader alone.
"""
import argparse
import glob
import math
import os
import re
import subprocess
import sys
import time

import torch

import augment
import config
import data
import runtime
import train


def table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)), flush=True)


# ------------------------------------------------------------------------------------------ CPU pipeline

def peer_pipelines(size_a3, size_v2):
    """What a user would otherwise run in each loader worker, augmentation included: timm's A3 train transform and
    torchvision's V2 preset (ClassificationPresetTrain, PIL backend), each on an opened file."""
    import torchvision.transforms as T
    v2 = T.Compose([T.RandomResizedCrop(size_v2, antialias=True), T.RandomHorizontalFlip(), T.TrivialAugmentWide(),
                    T.PILToTensor(), T.ConvertImageDtype(torch.float),
                    T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD), T.RandomErasing(0.1)])
    peers = {"v2": lambda path: v2(data.Image.open(path).convert("RGB"))}
    try:
        from timm.data import create_transform
        a3 = create_transform(size_a3, is_training=True, auto_augment="rand-m6-mstd0.5-inc1", interpolation="bicubic")
        peers["a3"] = lambda path: a3(data.Image.open(path).convert("RGB"))
    except ImportError:
        print("timm is not installed (pip install timm, in a scratch venv): no A3 row")
    return peers


def our_worker(size, interpolation, decoder="simplejpeg"):
    """train.py's loader worker: read, decode (simplejpeg, or PIL alone), crop, resize, flip; uint8 out."""
    crop = data.RandomResizedCropFlip(size, interpolation=interpolation)

    def load(path):
        saved, data.simplejpeg = data.simplejpeg, data.simplejpeg if decoder == "simplejpeg" else None
        try:
            with open(path, "rb") as f:
                return crop(f.read())
        finally:
            data.simplejpeg = saved
    return load


def per_core_rates(pipes, files, rounds):
    """img/s of each pipeline on one core, alternating rounds over the same files in one run."""
    seconds = dict.fromkeys(pipes, 0.0)
    for pipe in pipes.values():  # untimed: files into the page cache, lazy imports, allocator
        pipe(files[0])
    for _ in range(rounds):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            for f in files:
                pipe(f)
            seconds[name] += time.perf_counter() - start
    return {k: rounds * len(files) / v for k, v in seconds.items()}


def device_augment_ms(recipe, res, batch, threads):
    """ms for train.py's device augmentation of one batch of `batch` uint8 images on the CPU."""
    torch.set_num_threads(threads)
    augment_fn = data.device_augment(config.get_args(["--data", "x", "--recipe", recipe]))
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    augment_fn(images, g)
    start = time.perf_counter()
    for _ in range(3):
        augment_fn(images, g)
    return (time.perf_counter() - start) / 3 * 1000


def augment_stats(files, size=160, reps=4):
    """Mean pixel change (of 255) and share of images left untouched, on the photos centre-cropped to `size`:
    timm's A3 RandAugment (PIL) against ours, torchvision's TrivialAugmentWide as V2 runs it (PIL) against ours."""
    import random
    import torchvision.transforms as T
    prep = T.Compose([T.Resize(size), T.CenterCrop(size)])
    photos = [prep(data.Image.open(f).convert("RGB")) for f in files]
    batch = torch.stack([T.functional.pil_to_tensor(p) for p in photos])
    peers = {"TrivialAugmentWide": (T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR),
                                    augment.TrivialAugmentWide())}
    try:
        from timm.data.auto_augment import rand_augment_transform
        hparams = dict(translate_const=int(size * 0.45), img_mean=augment.MEAN_FILL, interpolation=data.Image.BICUBIC)
        peers["RandAugment m6 mstd0.5"] = (rand_augment_transform("rand-m6-mstd0.5-inc1", hparams),
                                           augment.RandAugment())
    except ImportError:
        pass
    rows, g = [], torch.Generator().manual_seed(0)
    random.seed(0)
    torch.manual_seed(0)
    for name, (theirs, ours) in peers.items():
        outputs = {"theirs (PIL)": [torch.stack([T.functional.pil_to_tensor(theirs(p)) for p in photos])
                                    for _ in range(reps)], "ours (batched)": [ours(batch, g) for _ in range(reps)]}
        for who, out in outputs.items():
            change = (torch.cat(out).int() - batch.repeat(reps, 1, 1, 1).int()).abs().float().mean((1, 2, 3))
            rows.append({"augmentation": name, "whose": who, "images": len(change),
                         "mean change /255": f"{change.mean():.1f}",
                         "untouched": f"{100 * (change == 0).float().mean():.1f}%"})
    return rows


def bench_pipeline(args):
    torch.set_num_threads(1)  # one worker = one core
    files = sorted(f for f in glob.glob(os.path.join(args.images, "**", "*"), recursive=True) if os.path.isfile(f))
    peers, rows = peer_pipelines(160, 176), []
    for recipe, res, how, peer in (("a3", 160, "bicubic", "timm A3 transform"), ("v2", 176, "bilinear",
                                                                                  "torchvision V2 preset")):
        pipes = {"ours": our_worker(res, how), "ours, PIL decode": our_worker(res, how, "PIL")}
        pipes.update({peer: peers[recipe]} if recipe in peers else {})
        rate = per_core_rates(pipes, files, args.rounds)
        for name in pipes:
            rows.append({"recipe": recipe, "res": res, "pipeline": name, "img/s (1 core)": f"{rate[name]:.0f}",
                         "ours/this": f"{rate['ours'] / rate[name]:.2f}x"})
    print(f"one worker, {len(files)} files x {args.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} cores")
    table(rows, ["recipe", "res", "pipeline", "img/s (1 core)", "ours/this"])
    rows = [{"recipe": recipe, "res": res, "augmentation": what, "threads": threads,
             "ms per 256": f"{device_augment_ms(recipe, res, 256, threads):.0f}"}
            for recipe, res, what in (("a3", 160, "RandAugment"), ("v2", 176, "TrivialAugmentWide + erasing"))
            for threads in sorted({1, args.threads or os.cpu_count() or 1})]
    print("\ndevice augmentation (augment.py) run on the CPU, one batch of 256")
    table(rows, ["recipe", "res", "augmentation", "threads", "ms per 256"])
    print(f"\naugmentations on the photos at 160 px, each photo {4} times")
    table(augment_stats(files), ["augmentation", "whose", "images", "mean change /255", "untouched"])


# ------------------------------------------------------------------------------------------ GPU model step

def step_fn(args, res, amp, channels_last, compile_mode, device):
    """train.py's training step (model, optimiser, mixing, loss, autocast) of the V2 recipe on a fresh ResNet-50."""
    targs = config.get_args(["--data", "synthetic", "--recipe", "v2", "--amp", amp, "--train-res", str(res),
                             "--batch-size", str(args.batch), "--global-batch", str(args.batch), "--no-ema",
                             "--workers", "0", "--device", device.type] +
                           (["--channels-last"] if channels_last else ["--no-channels-last"]))
    config.split_batch(targs, 1)
    d = runtime.Dist(0, 1, device, False)
    t = train.build_trainer(targs, d, 1000, steps_per_epoch=10**6)
    t.net = torch.compile(t.net, mode=compile_mode) if compile_mode else t.net
    weights = torch.ones(args.batch).pin_memory() if device.type == "cuda" else torch.ones(args.batch)

    def step(images, labels):  # with the device augmentation (TrivialAugmentWide, erasing) and mixing
        return train.train_step(targs, d, t, iter([(images, labels, weights, [])]))[0]
    return step


def timed(step, loader, skip, steps, device):
    """img/s over `steps` steps after `skip` untimed ones, peak memory, and the share of the timed wall time spent
    waiting for the next batch. step=None times the loader alone."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it, wait, loss = iter(loader), 0.0, None
    for _ in range(skip):
        batch = next(it)
        loss = step(*batch[:2]) if step else loss
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        loss = step(*batch[:2]) if step else loss
    if loss is not None:
        loss.item()
    sync()
    seconds = time.perf_counter() - start
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" and step else "-"
    return steps * loader.batch_size / seconds, mem, 100 * wait / seconds


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
            step = step_fn(args, res, amp, cl, mode, device)
            print(f"timing {name} at {res} px, batch {args.batch}: {args.warmup} + {args.steps} steps"
                  f"{' (minutes on a CPU: try --batch 16 --warmup 1 --steps 3)' if device.type == 'cpu' else ''}",
                  flush=True)
            rate, mem, _ = timed(step, Repeat(args.batch, res, device), args.warmup, args.steps, device)
            rows.append({"data": "synthetic", "mode": name, "res": res, "batch": args.batch, "img/s": f"{rate:.0f}",
                         "peak mem": mem})
            torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


# ------------------------------------------------------------------------------------------ real JPEGs

def repeated_folder(images, repeat, link_dir):
    """An ImageNet-layout folder of links to `images`, each file `repeat` times in train/, once in val/."""
    root = os.path.join(link_dir, f"x{repeat}")
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


def jpeg_plan(args):
    """(steps skipped, steps timed, repeat) for the CPU-decode rows. The workers start together and hand over their
    first batches at once, so the first 2 x workers steps are skipped. Workers faster than the model fill their
    queue, and the model's rate is then the true figure; workers slower than the model keep at most about one batch
    each in stock, which over 10 x workers timed steps lifts the figure by at most about a tenth. `repeat` (0 = auto)
    makes the made-up epoch long enough for both."""
    skip, steps = 2 * args.workers, max(args.steps, 10 * args.workers)
    files = sum(len(fs) for _, _, fs in os.walk(args.images))
    return skip, steps, args.repeat or math.ceil((skip + steps) * args.batch / max(files, 1)) + 1


def bench_jpeg(args, device):
    """train.py's loader on real JPEGs: the loader alone, then the training step on its batches."""
    skip, steps, repeat = jpeg_plan(args)
    root = repeated_folder(args.images, repeat, args.link_dir)
    torch.backends.cudnn.benchmark = True
    amp, cl = ("bf16", True) if device.type == "cuda" else ("off", False)
    rows = []
    for res in args.res:
        targs = config.get_args(["--data", root, "--recipe", "v2", "--ra-reps", "1", "--train-res", str(res),
                                 "--batch-size", str(args.batch), "--global-batch", str(args.batch), "--workers",
                                 str(args.workers), "--device", device.type])
        config.split_batch(targs, 1)
        loader = data.build_loaders(targs, root, 0, 1, device.type == "cuda")[2]
        name = f"JPEG, {args.workers} workers"
        rate, _, _ = timed(None, loader, skip, steps, device)
        rows.append({"data": name + ", loader alone", "mode": "-", "res": res, "batch": args.batch,
                     "img/s": f"{rate:.0f}", "peak mem": "-", "data wait": "-"})
        step = step_fn(args, res, amp, cl, None, device)
        # Warm the model up (cudnn.benchmark's search, the allocator) on a synthetic batch before the loader starts:
        # warming up on loader batches would let the workers fill their queue meanwhile, and the timed steps would
        # then run partly on that stock instead of at the rate the workers keep up.
        timed(step, Repeat(args.batch, res, device), args.warmup, 1, device)
        loader = data.build_loaders(targs, root, 0, 1, device.type == "cuda")[2]  # fresh workers, empty queue
        rate, mem, wait = timed(step, loader, skip, steps, device)
        rows.append({"data": name, "mode": f"{'bf16 channels_last' if cl else 'fp32'} eager", "res": res,
                     "batch": args.batch, "img/s": f"{rate:.0f}", "peak mem": mem, "data wait": f"{wait:.0f}%"})
    return rows


def reference_rate(log, batch, skip_prints=4):
    """End-to-end img/s from torchvision's reference train.py log, and its own img/s. Every --print-freq steps it
    prints "img/s", the last step's compute alone (its clock starts after the batch arrives), and "time", the mean
    wall time of the last 20 steps including the wait for data. The first `skip_prints` prints are warmup."""
    steps = [float(x) for x in re.findall(r"Epoch: \[\d+\]\s+\[\s*\d+/\d+\].*? time: ([0-9.]+)", log)][skip_prints:]
    compute = [float(x) for x in re.findall(r"img/s: ([0-9.]+)", log)][skip_prints:]
    rate = batch * len(steps) / sum(steps) if steps else float("nan")
    return rate, (sum(compute) / len(compute) if compute else float("nan"))


def bench_reference(args, device):
    """torchvision's references/classification/train.py with --amp on the same folder, batch and device."""
    root = repeated_folder(args.images, jpeg_plan(args)[2], args.link_dir)
    cmd = [sys.executable, os.path.join(args.vision, "train.py"), "--data-path", root, "--model", "resnet50", "--amp",
           "--batch-size", str(args.batch), "--workers", str(args.workers), "--epochs", "1", "--print-freq", "10",
           "--train-crop-size", str(args.res[0]), "--device", device.type, "--output-dir", ""]
    rate, own = reference_rate(subprocess.run(cmd, capture_output=True, text=True).stdout, args.batch)
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
    p.add_argument("--repeat", type=int, default=0, help="times each sample photo appears in the made-up epoch (0 = "
                   "as many as the timed JPEG steps need)")
    p.add_argument("--link-dir", default="third_party/bench_data", help="where the repeated folder of links goes")
    p.add_argument("--vision", default="third_party/vision_ref", help="torchvision's references/classification folder")
    p.add_argument("--rounds", type=int, default=3, help="pipeline: alternating rounds over the files")
    p.add_argument("--threads", type=int, default=0, help="pipeline: CPU threads for the device augmentation row "
                   "(0 = all cores)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--modes", nargs="+", default=list(SYNTHETIC_MODES), choices=list(SYNTHETIC_MODES),
                   help="synthetic: which rows (compile ones take a minute or more each to compile)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for GPU sections")
    args = p.parse_args()
    if args.what in ("pipeline", "jpeg", "reference", "all") and not os.path.isdir(args.images):
        p.error(f"--images {args.images}: no such folder (it needs <class>/<image> files)")
    if os.path.isdir(os.path.join(args.images, "train")):  # an ImageNet-layout folder: its training images
        args.images = os.path.join(args.images, "train")
    if args.what in ("reference", "all") and not os.path.isfile(os.path.join(args.vision, "train.py")):
        p.error(f"--vision {args.vision}: no train.py there (copy torchvision's references/classification there)")
    device = torch.device(args.device)
    if args.what == "pipeline":
        return bench_pipeline(args)
    rows = []
    for what, fn in (("synthetic", bench_synthetic), ("jpeg", bench_jpeg), ("reference", bench_reference)):
        if args.what in (what, "all"):
            rows += fn(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    table(rows, ["data", "mode", "res", "batch", "img/s", "peak mem", "data wait"])


if __name__ == "__main__":
    main()
