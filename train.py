"""Train ResNet-50 from random weights on ImageNet (or the built-in demo), on one GPU, many GPUs, or the CPU.

Needs torch, torchvision, pillow and the files beside it (model.py, init.py, augment.py, data.py).

    python train.py                                   # built-in demo: ~2 min on a 2-core CPU, 93% top-1
    python train.py --data /imagenet --epochs 100     # ImageNet, one GPU
    torchrun --nproc_per_node=8 train.py --data /imagenet --epochs 100 --batch-size 128   # one node, 8 GPUs
    python train.py --data synthetic --epochs 1       # random tensors on the device: the model's own speed
    python train.py --data /imagenet --eval-only --resume runs/r50/model.pt
    python train.py --data /imagenet --resume auto    # continue OUTPUT/last.pt after a crash or preemption

Defaults are one ImageNet recipe, torchvision's "V2" ResNet-50 recipe (README, "The recipe"). The run writes
OUTPUT/last.pt (every epoch, and on SIGTERM/SIGINT), best.pt, model.pt (final weights, a plain state_dict) and
metrics.jsonl (one JSON line per epoch).
"""
import argparse
import datetime
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import augment
import data
import init
import model as models

# The built-in demo (no --data): small settings that finish in about 2 minutes on 2 CPU cores (BENCHMARKS.md,
# "Demo"). Flags given on the command line still win.
DEMO = dict(epochs=6, batch_size=32, lr=2.0, zero_init_residual=True, warmup_epochs=1, weight_decay=5e-5, label_smoothing=0.0, mixup=0.0,
            cutmix=0.0, auto_augment="none", random_erase=0.0, min_scale=0.5, train_res=48, val_res=48,
            val_resize=48, workers=2, output="runs/demo")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's full usage block
        fail(f"{message} (python train.py --help lists the flags)")


def get_args(argv=None):
    p = ArgumentParser(description="Train ResNet-50 from scratch.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data", default=None, help="ImageNet-layout folder (DATA/train/<class>, DATA/val/<class>); 'synthetic' for random "
      "tensors on the device; leave out for the built-in demo")
    a("--demo-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "resnet50-demo-v2"), help="where the demo set is written once")
    a("--model", default="resnet50", choices=sorted(models.MODELS), help="resnet50 is ours (model.py), tv_resnet50 torchvision's")
    a("--epochs", type=int, default=100, help="training epochs")
    a("--batch-size", type=int, default=256, help="images per process per step (global batch = this x processes)")
    a("--lr", type=float, default=0.5, help="peak LR per 1024 images of global batch; the peak is lr x global_batch/1024 (linear scaling, Goyal et al. 2017)")
    a("--opt", default="sgd", choices=["sgd", "adamw", "ranger"], help="sgd: SGD with momentum, L2 weight decay (the ImageNet recipe); "
      "adamw: AdamW (Loshchilov & Hutter 2019) with betas (--momentum, 0.99), eps 1e-6 and decoupled weight decay (lr x wd); "
      "ranger: RAdam (Liu et al. 2020) with those betas, eps and decay, inside Lookahead (Zhang et al. 2019; k 6, alpha "
      "0.5), as fastai's ranger: the Imagenette 5-epoch recipe (README)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (beta1 of adamw and ranger)")
    a("--weight-decay", type=float, default=2e-5, help="weight decay on conv and fc weights (none on BatchNorm and biases); an L2 term with sgd, "
      "decoupled with adamw and ranger (where 0.01-0.05 is usual)")
    a("--warmup-epochs", type=float, default=5, help="linear warmup from 0 to the peak LR, then --decay to 0; set every step")
    a("--decay", default="cosine", choices=["cosine", "linear", "flat-cos"], help="LR decay after warmup, to 0 at the last "
      "step: cosine (torchvision's recipe), linear (Li et al. 2020, 'Budgeted Training', found it robust for short budgets) "
      "or flat-cos (the peak for 75%% of the steps, then half a cosine: fastai's fit_flat_cos, used with ranger)")
    a("--label-smoothing", type=float, default=0.1, help="label smoothing")
    a("--mixup", type=float, default=0.2, help="mixup alpha (0 = off)")
    a("--cutmix", type=float, default=1.0, help="cutmix alpha (0 = off); with both on, one of the two per batch")
    a("--auto-augment", default="ta_wide", choices=["ta_wide", "none"], help="TrivialAugmentWide or none")
    a("--random-erase", type=float, default=0.1, help="random erasing probability")
    a("--min-scale", type=float, default=0.08, help="smallest RandomResizedCrop area fraction")
    a("--train-res", type=int, default=176, help="training crop size (FixRes effect: train smaller, test larger)")
    a("--val-res", type=int, default=224, help="validation centre-crop size")
    a("--val-resize", type=int, default=232, help="validation resize of the shorter side before the centre crop")
    a("--zero-init-residual", action=argparse.BooleanOptionalAction, default=False, help="zero the last BN of each residual block")
    a("--ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of weights and buffers and evaluate it too")
    a("--ema-half-life", type=float, default=0.027, help="EMA half-life as a fraction of all training steps (0.027 is what "
      "torchvision's --model-ema-decay 0.99998 --model-ema-steps 32 gives on ImageNet at batch 1024, at any epoch count)")
    a("--decode", default="cpu", choices=["cpu", "gpu"], help="gpu: workers only read files; JPEGs are decoded in batches "
      "with nvJPEG and cropped on the device (torchvision.io.decode_jpeg); 7x slower than cpu on one H200 (BENCHMARKS.md)")
    a("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes per training process")
    a("--output", default="runs/r50", help="folder for checkpoints and metrics.jsonl")
    a("--resume", default=None, help="checkpoint to continue from, or 'auto' for OUTPUT/last.pt if it exists")
    a("--amp", default=None, choices=["bf16", "fp16", "off"], help="autocast dtype; default bf16 on GPUs that support it, fp16 "
      "on older GPUs, off (fp32) on the CPU")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC memory layout (default: on with CUDA)")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across processes (for small per-GPU batches)")
    a("--seed", type=int, default=0, help="random seed; the data order depends only on seed and epoch")
    a("--device", default=None, help="cuda or cpu (default: cuda when available)")
    a("--eval-only", action="store_true", help="only evaluate --resume's weights on DATA/val")
    a("--log-every", type=int, default=50, help="steps between progress lines (the loss is read from the device only then)")
    a("--save-every-min", type=float, default=0, help="also write last.pt every this many minutes mid-epoch (0 = only per epoch)")
    a("--max-steps", type=int, default=0, help="stop after this many steps in total (smoke tests); 0 = no limit")
    args = p.parse_args(argv)
    if args.data is None:
        p.set_defaults(**DEMO)
        args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "train_res", "val_res", "val_resize", "log_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "random_erase", "workers",
                 "save_every_min", "max_steps", "ema_half_life"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if args.label_smoothing >= 1 or args.random_erase > 1 or not 0 < args.min_scale <= 1:
        p.error("--label-smoothing must be < 1, --random-erase <= 1 and --min-scale in (0, 1]")
    if args.eval_only and not args.resume:
        p.error("--eval-only needs --resume PATH (the weights to evaluate)")
    return args


# ------------------------------------------------------------------------------------------------------- setup

def setup_distributed(args):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; plain `python train.py` is world size 1. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else device_type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return rank, world, device


def fail(message, code=2):
    """A user-facing error: one line, no traceback, non-zero exit."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def log(rank, *items):
    if rank == 0:
        print(*items, flush=True)


def check_output_writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        fail(f"cannot write to --output {folder}: {error.strerror}")


def build_model(args, num_classes, device, world):
    torch.manual_seed(args.seed)
    net = models.create_model(args.model, num_classes)
    # The recipe's init on top of torchvision's: fc ~ N(0, 0.01) (Goyal et al. 2017) and optional zero-init residual.
    init.init_weights(net, zero_init_residual=args.zero_init_residual, fc_std=0.01)
    if args.sync_bn and world > 1:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    return net


def build_optimizer(args, net, peak_lr):
    decay = [p for p in net.parameters() if p.ndim > 1]  # conv and fc weights
    no_decay = [p for p in net.parameters() if p.ndim <= 1]  # BatchNorm weights and all biases
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(net.parameters()).is_cuda  # one fused kernel for the whole update on CUDA
    if args.opt == "adamw":  # beta2 0.99 and eps 1e-6: fastai's train_imagenette.py defaults for its Adam family
        return torch.optim.AdamW(groups, lr=peak_lr, betas=(args.momentum, 0.99), eps=1e-6, fused=fused or None)
    if args.opt == "ranger":
        return Ranger(groups, lr=peak_lr, betas=(args.momentum, 0.99), eps=1e-6, decoupled_weight_decay=True)
    return torch.optim.SGD(groups, lr=peak_lr, momentum=args.momentum, fused=fused or None)


class Ranger(torch.optim.RAdam):
    """RAdam inside Lookahead (Zhang et al. 2019): every k steps the slow weights move alpha of the way to the fast
    ones, and the fast weights restart from there. k 6 and alpha 0.5 are fastai's, whose ranger the imagenette
    leaderboard's script uses. The slow weights live in the per-parameter state, so checkpoints carry them."""

    def __init__(self, params, k=6, alpha=0.5, **radam_args):
        super().__init__(params, **radam_args)
        self.k, self.alpha = k, alpha

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        start = [(p, p.clone()) for p in params if not self.state[p]]  # the first step: the slow weights start here
        loss = super().step(closure)
        for p, weights in start:
            self.state[p]["slow"] = weights
        if params and int(self.state[params[0]]["step"]) % self.k == 0:
            for p in params:
                slow = self.state[p]["slow"]
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)
        return loss


def make_ema(net, half_life_steps):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    decay = 0.5 ** (1.0 / max(half_life_steps, 1.0))
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def lr_at(step, total_steps, warmup_steps, peak_lr, decay="cosine"):
    """Linear warmup from peak/warmup_steps to peak over warmup_steps, then cosine (linear, flat-cos) from peak to 0 at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if decay == "flat-cos":
        progress = max(progress - 0.75, 0.0) / 0.25  # fastai's fit_flat_cos: flat for 75%, the cosine in the last 25%
    if decay == "linear":
        return peak_lr * (1.0 - progress)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


def plain_state_dict(net):
    """The state_dict without DDP's `module.` or torch.compile's `_orig_mod.` wrappers."""
    net = getattr(net, "module", net)
    net = getattr(net, "_orig_mod", net)
    return net.state_dict()


def save_checkpoint(obj, path):
    """Atomic: write a temporary file, flush it to disk, then rename over the old one. A kill at any moment leaves
    either the old file or the new one, never a torn file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        fail(f"--resume: no such file {path}")
    except Exception as error:  # a torn or foreign file: say which and why, no traceback
        fail(f"--resume: cannot load {path}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def rng_states():
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


# ------------------------------------------------------------------------------------------------- train, eval

class StopRequested:
    """SIGTERM/SIGINT (what SLURM and Kubernetes send before a kill) set a flag; the loop checks it after each step."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        self.signum = signum


def autocast(args, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    return torch.amp.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(net, loader, device, args, world):
    """Exact top-1/top-5 and mean loss over the whole val set: each rank its own shard, counts summed over ranks."""
    net.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, images
    for images, labels, _bad in loader:
        if images is None:
            continue
        images = data.to_device_normalized(images, device, args.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(args, device):
            logits = net(images)
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        totals += torch.stack([F.cross_entropy(logits.float(), labels, reduction="sum"),
                               (top5[:, 0] == labels).sum(), (top5 == labels[:, None]).any(1).sum(),
                               torch.tensor(labels.numel(), device=device)]).double()
    if world > 1:
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    return {"loss": loss / max(count, 1), "top1": 100 * top1 / max(count, 1), "top5": 100 * top5 / max(count, 1), "images": int(count)}


def train_step(run, images, labels):
    """One optimiser step at the scheduled LR (and an EMA update). Returns the loss, still on the device: no host sync."""
    args, device, optimizer, scaler = run["args"], run["device"], run["optimizer"], run["scaler"]
    for group in optimizer.param_groups:
        group["lr"] = lr_at(run["step"], run["total_steps"], run["warmup_steps"], run["peak_lr"], args.decay)
    if args.decode == "gpu":
        images = data.decode_batch_on_device(images, args.train_res, device, run["gpu_augment"])
    images = data.to_device_normalized(images, device, args.channels_last)
    images, targets = run["mixer"](images, labels.to(device, non_blocking=True))
    with autocast(args, device):
        loss = augment.soft_cross_entropy(run["net"](images), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if run["ema"] is not None:
        if run["step"] < run["warmup_steps"]:
            run["ema"].n_averaged.zero_()  # as torchvision: the EMA follows the weights until warmup ends
        run["ema"].update_parameters(run["raw"])
    return loss.detach()


def train_one_epoch(run, loader, sampler, epoch):
    """One pass over this rank's shard (from `sampler.skip` on). Returns (mean loss, images, seconds, data wait), or
    None when a stop signal arrived (run["samples_done"] holds the position to save)."""
    args, world, steps_in_epoch = run["args"], run["world"], run["steps_per_epoch"]
    run["net"].train()
    first = sampler.skip // args.batch_size if sampler is not None else 0
    loss_sum, loss_count = torch.zeros((), device=run["device"]), 0
    epoch_loss, epoch_count, images_seen, wait = 0.0, 0, 0, 0.0
    start = window_start = t0 = time.perf_counter()
    window_images, window_wait = 0, 0.0
    for i, (images, labels, bad) in enumerate(loader, start=first):
        window_wait += time.perf_counter() - t0
        for b in [b for b in bad if b not in run["bad_files"]]:
            run["bad_files"].add(b)
            print(f"warning: skipping unreadable image {b}", file=sys.stderr, flush=True)
        run["samples_done"] = (i + 1) * args.batch_size
        if images is not None and len(images):
            loss_sum, loss_count = loss_sum + train_step(run, images, labels), loss_count + 1
            window_images += len(labels) * world
        run["step"] += 1
        last = i + 1 == steps_in_epoch or run["step"] == run["max_steps"]
        save_due = run["save_every_s"] and time.perf_counter() - run["last_save"] > run["save_every_s"]
        # Collectives (loss read, stop vote) happen at the same steps on every rank; alone, any step may stop or save.
        if run["step"] % args.log_every == 0 or last or (world == 1 and (run["stop"].signum or save_due)):
            mean = read_mean_loss(run, loss_sum, loss_count)  # exits on NaN/inf before anything is saved
            epoch_loss, epoch_count = epoch_loss + mean * loss_count, epoch_count + loss_count
            now = time.perf_counter()
            rate = window_images / max(now - window_start, 1e-9)
            eta = (run["total_steps"] - run["step"]) * args.batch_size * world / max(rate, 1e-9)
            log(run["rank"], f"epoch {epoch + 1}/{args.epochs} step {i + 1}/{steps_in_epoch} loss {mean:.4f} "
                f"lr {run['optimizer'].param_groups[0]['lr']:.4g} img/s {rate:.0f} "
                f"data {100 * window_wait / max(now - window_start, 1e-9):.0f}% eta {datetime.timedelta(seconds=int(eta))}")
            loss_sum, loss_count = torch.zeros((), device=run["device"]), 0
            images_seen, wait = images_seen + window_images, wait + window_wait  # the epoch's last step always logs
            window_start, window_images, window_wait = now, 0, 0.0
            if run["stop"].signum if world == 1 else stop_requested_anywhere(run):
                return None
            if save_due and not last:
                save_last(run, epoch, run["samples_done"])
        if last:
            break
        t0 = time.perf_counter()
    return epoch_loss / max(epoch_count, 1), images_seen, time.perf_counter() - start, wait


def read_mean_loss(run, loss_sum, count):
    """The one host sync: the mean loss since the last read, over all ranks. A NaN/inf stops the run here."""
    totals = torch.stack([loss_sum.float(), torch.tensor(float(count), device=loss_sum.device)])
    if run["world"] > 1:
        dist.all_reduce(totals)
    total, n = totals.tolist()
    mean = total / max(n, 1)
    if not math.isfinite(mean):
        fail(f"loss is {mean} at step {run['step']} (lr {run['optimizer'].param_groups[0]['lr']:.4g}); nothing was saved "
             f"after the last good checkpoint in {run['args'].output}. Try a lower --lr, a longer --warmup-epochs, "
             "or --amp bf16/off instead of fp16.", code=3)
    return mean


def stop_requested_anywhere(run):
    flag = torch.tensor([float(run["stop"].signum)], device=run["device"])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    run["stop"].signum = run["stop"].signum or int(flag.item())
    return bool(flag.item())


def sync_buffers(run):
    """DDP keeps each rank's BatchNorm statistics from its own last batches; take rank 0's before evaluating and
    saving, so every rank evaluates (and the checkpoint holds) the same model."""
    for module in (run["raw"], run["ema"]):
        for buffer in module.buffers() if module is not None else ():
            dist.broadcast(buffer, 0)


def checkpoint(run, next_epoch, samples_done):
    return {"model": plain_state_dict(run["net"]), "optimizer": run["optimizer"].state_dict(),
            "scaler": run["scaler"].state_dict(), "ema": plain_state_dict(run["ema"].module) if run["ema"] else None,
            "epoch": next_epoch, "samples_done": samples_done, "step": run["step"], "best_top1": run["best_top1"],
            "config": vars(run["args"]), "num_classes": run["num_classes"], "rng": rng_states()}


def save_last(run, next_epoch, samples_done):
    if run["rank"] == 0:
        save_checkpoint(checkpoint(run, next_epoch, samples_done), os.path.join(run["args"].output, "last.pt"))
    run["last_save"] = time.perf_counter()


def restore(run, ckpt):
    """Load a full checkpoint (last.pt, best.pt) into the run, or a plain state_dict (model.pt) for evaluation."""
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    try:
        run["raw"].load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        fail(f"--resume {run['args'].resume}: weights do not fit --model {run['args'].model} with {run['num_classes']} "
             f"classes ({str(error).splitlines()[0][:200]})")
    if "optimizer" not in ckpt:
        return
    trained_with = ckpt["config"].get("opt", "sgd")  # checkpoints from before --opt are SGD's
    if trained_with != run["args"].opt:
        fail(f"--resume {run['args'].resume} was trained with --opt {trained_with}, not --opt {run['args'].opt}")
    run["optimizer"].load_state_dict(ckpt["optimizer"])
    run["scaler"].load_state_dict(ckpt["scaler"])
    if run["ema"] is not None and ckpt["ema"] is not None:
        run["ema"].module.load_state_dict(ckpt["ema"])
        run["ema"].n_averaged.fill_(1)
    run["step"], run["best_top1"], run["start_epoch"] = ckpt["step"], ckpt["best_top1"], ckpt["epoch"]
    run["skip"] = ckpt["samples_done"]
    set_rng_states(ckpt["rng"])


def end_epoch(run, epoch, train_loss, images_seen, seconds, wait, eval_net, val_loader):
    """Evaluate the raw (and EMA) weights, save best.pt and last.pt, append to metrics.jsonl; return the metrics."""
    args, rank, world, device = run["args"], run["rank"], run["world"], run["device"]
    if world > 1:
        sync_buffers(run)
    metrics = {"epoch": epoch + 1, "lr": run["optimizer"].param_groups[0]["lr"], "train_loss": train_loss,
               "img_per_s": images_seen / seconds, "epoch_time_s": seconds, "data_wait_share": wait / seconds}
    if val_loader is not None:
        metrics.update({f"val_{k}": v for k, v in evaluate(eval_net, val_loader, device, args, world).items()})
        if run["ema"] is not None:
            ema_val = evaluate(run["ema"], val_loader, device, args, world)
            metrics.update({"ema_top1": ema_val["top1"], "ema_top5": ema_val["top5"], "ema_loss": ema_val["loss"]})
        score = max(metrics["val_top1"], metrics.get("ema_top1", 0))
        if rank == 0 and score > run["best_top1"]:
            run["best_top1"] = score
            save_checkpoint(checkpoint(run, epoch + 1, 0), os.path.join(args.output, "best.pt"))
    save_last(run, epoch + 1, 0)
    if rank == 0:
        with open(os.path.join(args.output, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
    log(rank, "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return metrics


def main(argv=None):
    args = get_args(argv)
    rank, world, device = setup_distributed(args)
    args.amp = args.amp or ("off" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    args.channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if rank == 0 and not args.eval_only:
        check_output_writable(args.output)
    try:
        num_classes, train_loader, sampler, val_loader = data.build_loaders(args, rank, world, device)
    except data.DataError as error:
        fail(str(error))
    raw = build_model(args, num_classes, device, world)
    torch.manual_seed(args.seed + rank)  # per-rank augmentation randomness; weights above are the same on all ranks
    global_batch = args.batch_size * world
    steps_per_epoch = len(train_loader) if sampler is None else len(sampler) // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    peak_lr = args.lr * global_batch / 1024
    run = dict(args=args, rank=rank, world=world, device=device, raw=raw, num_classes=num_classes, step=0, start_epoch=0,
               skip=0, best_top1=0.0, samples_done=0, bad_files=set(), stop=StopRequested(), last_save=time.perf_counter(),
               save_every_s=args.save_every_min * 60, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               warmup_steps=round(args.warmup_epochs * steps_per_epoch), peak_lr=peak_lr,
               max_steps=args.max_steps or total_steps)
    run["optimizer"] = build_optimizer(args, raw, peak_lr)
    run["scaler"] = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    run["ema"] = make_ema(raw, args.ema_half_life * total_steps) if args.ema else None
    run["gpu_augment"] = data.train_transform(args.train_res, args.auto_augment, args.random_erase, crop=False)
    run["mixer"] = augment.MixupCutmix(num_classes, args.mixup, args.cutmix, 0.5, args.label_smoothing)
    if args.resume == "auto":
        args.resume = os.path.join(args.output, "last.pt") if os.path.exists(os.path.join(args.output, "last.pt")) else None
        log(rank, f"--resume auto: {'continuing ' + args.resume if args.resume else 'no last.pt yet, starting fresh'}")
    if args.resume:
        restore(run, load_checkpoint(args.resume))
    net = raw
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    # Evaluation uses the unwrapped model: val shards differ in length across ranks and need no DDP collectives.
    eval_net = torch.compile(raw) if args.compile else raw
    if args.compile:
        net = torch.compile(net)
    run["net"] = net
    if args.eval_only:  # nothing to save: SIGTERM/SIGINT (Ctrl-C) end it at once, not after the whole val set
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        result = evaluate(eval_net, val_loader, device, args, world)
        log(rank, json.dumps({"checkpoint": args.resume, **{f"val_{k}": v for k, v in result.items()}}))
        return result
    log(rank, f"{args.model}: {num_classes} classes, {world} process(es) on {device}, global batch {global_batch}, "
        f"peak lr {peak_lr:.4g}, amp {args.amp}, {steps_per_epoch} steps/epoch x {args.epochs} epochs -> {args.output}")
    metrics = None
    for epoch in range(run["start_epoch"], args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            sampler.skip, run["skip"] = run["skip"], 0
            train_loader.generator.manual_seed(args.seed * 100003 + epoch * 1009 + rank)  # worker seeds: f(seed, epoch, rank)
        result = train_one_epoch(run, train_loader, sampler, epoch)
        if result is None:  # SIGTERM/SIGINT: save the position inside the epoch and leave
            save_last(run, epoch, run["samples_done"])
            log(rank, f"stopped by signal {run['stop'].signum} at epoch {epoch + 1} step {run['step']}; saved "
                f"{args.output}/last.pt. Continue with the same command plus --resume auto")
            sys.exit(128 + run["stop"].signum)
        metrics = end_epoch(run, epoch, *result, eval_net, val_loader)
        if run["step"] >= run["max_steps"]:
            break
    if rank == 0 and metrics is not None:
        use_ema = run["ema"] is not None and metrics.get("ema_top1", -1) > metrics.get("val_top1", 0)
        save_checkpoint(plain_state_dict(run["ema"].module if use_ema else net), os.path.join(args.output, "model.pt"))
        log(rank, f"done: {args.output}/model.pt ({'EMA' if use_ema else 'raw'} weights), best top-1 {run['best_top1']:.2f}%")
    if world > 1:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
