"""Train ResNet-50 from random weights on ImageNet (or the built-in demo), on one GPU, many GPUs, or the CPU.

Needs torch, torchvision, pillow and the files beside it (config, runtime, data, demo, model, init, augment, lamb, ema).

    python train.py                                   # the built-in demo: ~2-3 min on a 2-core CPU
    python train.py --data /imagenet                  # ImageNet, one GPU: "ResNet strikes back" A3, 100 epochs
    torchrun --nproc_per_node=8 train.py --data /imagenet --batch-size 256   # one node, 8 GPUs (global batch 2048)
    python train.py --data /imagenet --recipe v2 --dry-run   # print what a run would do, as JSON, and exit
    python train.py --data /imagenet --resume auto    # continue OUTPUT/last.pt after a crash or preemption
    python train.py --data /imagenet --eval-only --resume runs/r50/last.pt   # score raw and EMA weights
    python train.py --data /mine --init-from runs/r50/model.pt --output runs/mine   # a new run from these weights
    python train.py --data synthetic --epochs 1       # random tensors on the device: the model's own speed

Recipes (--recipe a3, v2, nette5, demo) are in config.py and README, "Recipes". A run writes OUTPUT/last.pt (at
every epoch end before validation, every --save-every-min, and at a stop), best.pt, model.pt (final weights, a plain
state_dict), metrics.jsonl, run.json (code, versions, machines, settings: an entry per start) and, with
--tensorboard, tb/. What a checkpoint fixes on resume: README, "Resume".
"""
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist

import augment
import config
from ema import EMA
import data
import demo
import init
import lamb
import model as models
import runtime
from runtime import (StopRequested, UserError, Vote, agree_on_error, agree_on_step, amp_default, broadcast_buffers,
                     check_finite, claim_output, load_checkpoint, log, mix_seed, report_problems, resolve_resume,
                     resume_metrics, save_checkpoint, setup_distributed, share)

# ------------------------------------------------------------------------------------------------------- setup

def build(args, d):
    """Everything before the first step that can fail, on every rank, with no collective (so a rank that fails
    alone cannot leave the others waiting in one); args.resume is rank 0's decision. Raises UserError."""
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        config.apply_contract(args, ckpt, d.world)
    config.check_platform(args, d.device.type, d.distributed)
    if not args.eval_only:
        config.split_batch(args, d.world)
    if args.data == "synthetic":
        batches = data.SyntheticBatches(args.batch_size, args.train_res, 1000, 100 * args.accum, d.device)
        loaders = (1000, 100 * args.global_batch, batches, None, None)
    else:
        root = args.data or demo.make_demo_dataset(args.demo_dir)
        try:
            loaders = data.build_loaders(args, root, d.rank, d.world, d.device.type == "cuda")
        except data.DataError as error:
            raise UserError(str(error)) from None
    num_classes, train_images = loaders[:2]
    if ckpt is not None and not args.eval_only:
        trained = ckpt["config"]["train_images"], ckpt["config"]["num_classes"]
        if trained != (train_images, num_classes):
            raise UserError(f"{args.resume} trained on {trained[0]} images in {trained[1]} classes; --data has "
                            f"{train_images} in {num_classes} (to train these weights on it, start a new run with "
                            f"--init-from {args.resume} in a new --output)")
    t = build_trainer(args, d, num_classes, steps_per_epoch=train_images // args.global_batch if train_images else 0)
    t.config = {**{k: getattr(args, k) for k in config.RECIPE}, "train_images": train_images,
                "num_classes": num_classes}
    if ckpt is not None:
        restore(args, t, ckpt)
    return t, loaders


# ------------------------------------------------------------------------------------------- model, optimiser

def lr_at(step, total_steps, warmup_steps, peak_lr, decay="cosine"):
    """Linear warmup from peak/warmup_steps to the peak, then cosine (or linear) from the peak to 0 at total_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return peak_lr * (1.0 - progress) if decay == "linear" else 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class Trainer:
    """The model and what moves it. `raw` is never wrapped (its state_dict is model.pt); `net` is what the step
    calls (raw under DDP and/or torch.compile; `ddp` the DDP wrapper). `step` counts global batches of
    config['global_batch'] images, each `accum` micro-batches a process; `augment` runs on the device."""
    raw: torch.nn.Module
    net: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mixer: augment.MixupCutmix
    augment: object
    accum: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    step: int = 0
    best: float = 0.0  # the best val or EMA top-1 so far
    config: dict = None
    epoch_totals: tuple = (0.0, 0, 0, 0)  # this epoch so far: loss sum, steps, unreadable images, good images
    ddp: object = None
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)  # the device augmentation's

    def models(self):  # what is saved, checked and synced: the weights and their EMA
        return [self.raw] + ([self.ema.module] if self.ema else [])


def build_trainer(args, d, num_classes, steps_per_epoch):
    torch.manual_seed(args.seed)  # the same weights on every rank
    raw = models.create_model(args.model, num_classes)
    init.init_weights(raw, zero_init_residual=args.zero_init_residual, fc_std=0.01)  # fc ~ N(0, 0.01): Goyal et al.
    if args.init_from:  # before the EMA copies the weights, so it starts from them too
        runtime.load_weights(raw, args.init_from, args.model, d)
    if args.sync_bn and d.distributed:
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(d.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    peak_lr = args.lr * args.global_batch / 1024
    decay = [p for p in raw.parameters() if p.ndim > 1]  # conv and fc weights; BN weights and biases get none
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": [p for p in raw.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = lamb.Lamb(groups, lr=peak_lr) if args.opt == "lamb" else \
        torch.optim.SGD(groups, lr=peak_lr, momentum=args.momentum, fused=d.device.type == "cuda" or None)
    total = args.epochs * steps_per_epoch
    ema = EMA(raw, 0.5 ** (1 / max(args.ema_half_life * total, 1))) if args.ema else None
    accum = getattr(args, "accum", 1)
    # An image's ra_reps copies are neighbours in the step's order and a micro-batch takes every (world x accum)-th
    # item: a mixing partner this many places back is never a copy (issue #52).
    shift = math.ceil(args.ra_reps / (d.world * accum))
    mixer = augment.MixupCutmix(num_classes, args.mixup, args.cutmix, 0.5, args.label_smoothing, torch.Generator(),
                                shift)
    # fp16 with LAMB: the scaler's step reads found_inf on the host, a sync each step (CUDA's fused SGD avoids it).
    scaler = torch.amp.GradScaler(d.device.type, enabled=args.amp == "fp16")
    return Trainer(raw, raw, ema, optimizer, scaler, mixer, data.device_augment(args), accum, steps_per_epoch, total,
                   round(args.warmup_epochs * steps_per_epoch), peak_lr)


def restore(args, t, ckpt):
    """A training checkpoint into the trainer, or (--eval-only) any state_dict of ours or torchvision's."""
    try:
        t.raw.load_state_dict(ckpt.get("model", ckpt))
        if t.ema is not None and ckpt.get("ema") is not None:
            t.ema.module.load_state_dict(ckpt["ema"])
    except (RuntimeError, AttributeError, TypeError) as error:
        why = runtime.weights_mismatch(t.raw, ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt, args.model)
        raise UserError(f"--resume {args.resume}: {why or ' '.join(str(error).split())[:200]}") from None
    if args.eval_only:  # config.apply_contract built an EMA only if the checkpoint has one
        return
    t.optimizer.load_state_dict(ckpt["optimizer"])
    runtime.state_like_params(t.optimizer)  # fused SGD needs each buffer in its parameter's layout
    if t.scaler.is_enabled() and ckpt["scaler"]:
        t.scaler.load_state_dict(ckpt["scaler"])
    t.step, t.best = ckpt["samples"] // t.config["global_batch"], ckpt["best_top1"]
    t.epoch_totals = tuple(ckpt["epoch_totals"])


def save_last(args, d, t, writer=0):
    """last.pt at the current step (rank 0 writes; every rank has the same weights)."""
    if d.rank == writer:
        save_checkpoint({"format": 3, "model": t.raw.state_dict(), "ema": t.ema.module.state_dict() if t.ema else None,
                         "optimizer": t.optimizer.state_dict(), "scaler": t.scaler.state_dict(), "step": t.step,
                         "samples": t.step * t.config["global_batch"], "epoch": t.step // t.steps_per_epoch,
                         "best_top1": t.best, "epoch_totals": t.epoch_totals, "config": t.config},
                        os.path.join(args.output, "last.pt"))


# ------------------------------------------------------------------------------------------------- train, eval

def autocast(args, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    return torch.amp.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_step(args, d, t, batches):
    """One optimiser step at the scheduled LR over t.accum micro-batches from `batches` (DDP averages gradients on
    the last one only), then the EMA update. Returns (loss on the device, images, good images, problems, seconds
    spent waiting for data)."""
    for group in t.optimizer.param_groups:
        group["lr"] = lr_at(t.step, t.total_steps, t.warmup_steps, t.peak_lr, args.decay)
    t.optimizer.zero_grad(set_to_none=True)
    loss_sum, count, good, problems, wait = 0.0, 0, 0, [], 0.0
    for m in range(t.accum):
        tick = time.perf_counter()
        images, labels, weights, found = next(batches)
        wait += time.perf_counter() - tick
        v = m * d.world + d.rank  # the sampler's virtual rank: its draws do not depend on how the step is split
        images = images.to(d.device, non_blocking=True)
        if t.augment is not None:
            t.generator.manual_seed(mix_seed(args.seed, t.step, v, 2))
            images = t.augment(images, t.generator)
        images = data.normalize(images, args.channels_last)
        t.mixer.generator.manual_seed(mix_seed(args.seed, t.step, v, 1))  # f(seed, step, virtual rank) only
        images, targets = t.mixer(images, labels.to(d.device, non_blocking=True))
        on_device = weights.to(d.device, non_blocking=True)
        with t.ddp.no_sync() if t.ddp is not None and m < t.accum - 1 else contextlib.nullcontext():
            with autocast(args, d.device):
                logits = t.net(images)
            loss = augment.binary_cross_entropy(logits, targets, args.bce_threshold, on_device) \
                if args.loss == "bce" else augment.soft_cross_entropy(logits, targets, on_device)
            t.scaler.scale(loss / t.accum).backward()
        loss_sum = loss_sum + loss.detach() / t.accum
        count, good, problems = count + len(weights), good + int(weights.sum()), problems + found
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if t.ema is not None:  # as torchvision: the EMA follows the weights until warmup ends
        t.ema.update(t.raw, copy_only=t.step < t.warmup_steps)
    t.step += 1
    return loss_sum, count, good, problems, wait


def read_window(args, d, t, window):
    """The one host sync in training: loss sum, steps, unreadable and good images since the last read, summed over
    ranks. A NaN/inf loss stops the run here, before anything is saved."""
    totals = torch.stack([window[0].float(), *(torch.full((), float(x), device=d.device) for x in window[1:])])
    if d.distributed:
        dist.all_reduce(totals)
    loss, steps, bad, good = totals.tolist()
    if not math.isfinite(loss):
        raise UserError(f"loss is {loss} at step {t.step} (lr {t.optimizer.param_groups[0]['lr']:.4g}); nothing was "
                        f"saved after the last good checkpoint in {args.output}.", code=3)
    return loss, steps, bad, good


def train_epoch(args, d, t, loader, stop, seen, tb):
    """Train from t.step to the end of its epoch, --max-steps, or a stop all ranks agreed on (a signal or a data
    error, voted every step); each progress line's figures also go to `tb`. Returns (stats, reason): reason None,
    "signal" or "data error"."""
    t.net.train()
    spe, epoch_number = t.steps_per_epoch, t.step // t.steps_per_epoch + 1
    end = min(epoch_number * spe, args.max_steps or t.total_steps)
    vote, fatal, total = Vote(d, 3), False, list(t.epoch_totals) if t.step % spe else [0.0, 0, 0, 0]
    before = total[1], total[3]  # steps and images of this epoch done before a restart: not in this run's timing
    window = [torch.zeros((), device=d.device), 0, 0, 0]
    start = window_start = last_save = time.perf_counter()
    wait, window_wait, batches, reason = 0.0, 0.0, runtime.loader_batches(loader, args.workers), None
    while True:
        try:
            loss, count, good, problems, waited = train_step(args, d, t, batches)
        except runtime.LoaderWorkerLost as lost:  # save the last step done, then stop
            raise save_after_lost_worker(args, d, t, lost, window, total) from None
        wait += waited
        fatal = report_problems(problems, seen) or fatal
        unreadable = sum(kind == "unreadable" for kind, _ in problems)  # not I/O errors: they stop the run at once
        window = [window[0] + loss, window[1] + 1, window[2] + unreadable, window[3] + good]
        save_due = args.save_every_min and d.rank == 0 and time.perf_counter() - last_save > args.save_every_min * 60
        flags = vote(stop.signum, fatal, save_due)
        if t.step == end:  # the last step's own vote too
            flags = tuple(map(max, flags, vote.drain()))
        if t.step % args.log_every == 0 or t.step == end or any(flags):
            w = read_window(args, d, t, window)
            total = [a + b for a, b in zip(total, w)]
            t.epoch_totals = tuple(total)  # what a checkpoint of this step keeps
            if total[2] > args.max_unreadable * len(loader.dataset):  # a stop like the others: saved first
                reason = (f"{int(total[2])} training images of {len(loader.dataset)} unreadable in this epoch, more "
                          f"than --max-unreadable {args.max_unreadable:g}: check the data (the warnings above)")
            now = time.perf_counter()
            eta = (t.total_steps - t.step) * (now - start) / max(total[1] - before[0], 1)
            span = max(now - window_start, 1e-9)
            shown = {"loss": w[0] / w[1], "lr": t.optimizer.param_groups[0]["lr"], "img_per_s": w[3] / span,
                     "data_wait_share": (wait - window_wait) / span, "unreadable": w[2]}
            log(d, f"epoch {epoch_number}/{args.epochs} step {(t.step - 1) % spe + 1}/{spe} loss {shown['loss']:.4f} "
                f"lr {shown['lr']:.4g} img/s {shown['img_per_s']:.0f} eta {datetime.timedelta(seconds=int(eta))}")
            tb.add("train", t.step, shown)
            window, window_start, window_wait = [torch.zeros((), device=d.device), 0, 0, 0], now, wait
        if flags[2]:
            check_finite(t.models(), t.step, d)
            save_last(args, d, t)
            last_save = time.perf_counter()
        if flags[0] or flags[1] or reason or t.step == end:
            break
    if total[3] == 0:
        reason = reason or "no training image in this epoch could be read: nothing to train on"
    seconds = time.perf_counter() - start
    stats = {"train_loss": total[0] / max(total[1], 1), "img_per_s": (total[3] - before[1]) / seconds,
             "epoch_time_s": seconds, "data_wait_share": wait / seconds, "train_unreadable": int(total[2])}
    return stats, "data error" if flags[1] else reason or ("signal" if flags[0] else None)


def save_after_lost_worker(args, d, t, lost, window, total):
    """A loader worker died (most often the OOM killer's SIGKILL) in the step after t.step, before its optimiser step:
    this rank saves step t.step and returns the one-line error. Under DDP the other ranks wait in that step's
    collective until torchrun stops them; their weights and optimiser state are this rank's, their BatchNorm
    statistics their own."""
    if not d.distributed:  # under DDP the last window's sum would need the others: the totals of the last read
        total = [a + b for a, b in zip(total, read_window(args, d, t, window))]
    t.epoch_totals = tuple(total)
    check_finite(t.models(), t.step)
    save_last(args, d, t, writer=d.rank)
    return UserError(f"{lost}; saved {args.output}/last.pt at step {t.step}; continue with: "
                     f"{config.command(args, workers=args.workers // 2, resume='auto')}", local=True)


@torch.no_grad()
def evaluate(net, loader, args, d, seen, stop=None):
    """Exact top-1/top-5 and mean loss over the whole val set: each rank its shard, sums over ranks. Unreadable
    images are reported and counted, not scored. A stop signal (`stop`) ends it at the next batch: None on all ranks
    (the epoch was saved before it)."""
    net.eval()
    totals = torch.zeros(7, dtype=torch.float64, device=d.device)  # loss, top1, top5, images, unreadable, fatal, stop
    for images, labels, weights, problems in loader:
        if stop is not None and stop.signum:
            totals[6].fill_(1.0)
            break
        fatal = report_problems([(kind, "val: " + message) for kind, message in problems], seen)
        images = data.to_device_normalized(images, d.device, args.channels_last)
        labels, weights = labels.to(d.device, non_blocking=True), weights.to(d.device, non_blocking=True)
        with autocast(args, d.device):
            logits = net(images).float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        totals[:6] += torch.stack([(loss * weights).sum(), ((top5[:, 0] == labels) * weights).sum(),
                                   ((top5 == labels[:, None]).any(1) * weights).sum(), weights.sum(),
                                   (1 - weights).sum(), torch.full((), float(fatal), device=d.device)]).double()
    if d.distributed:
        dist.all_reduce(totals)
    loss, top1, top5, count, bad, fatal, stopped = totals.tolist()
    if stopped:
        return None
    if fatal or not count:
        raise UserError("a validation image could not be read (the error above)" if fatal else
                        "no validation image could be scored: all of them are unreadable")
    if bad > args.max_unreadable * (count + bad):  # as in training: not a score on what is left
        raise UserError(f"{int(bad)} of {int(count + bad)} validation images unreadable, more than --max-unreadable "
                        f"{args.max_unreadable:g}: check the data (the warnings above)")
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count, "images": int(count),
            "unreadable": int(bad)}


# ------------------------------------------------------------------------------------------------ epochs, main

def validate(args, d, t, stats, val_loader, seen, tb, stop=None):
    """Score the raw (and EMA) weights; rank 0 appends to metrics.jsonl (and `tb`, by epoch) and copies last.pt to
    best.pt if it is the best so far. Returns the metrics, or None if a stop signal cut it short."""
    metrics = {"epoch": t.step // t.steps_per_epoch, "lr": t.optimizer.param_groups[0]["lr"], **stats}
    for name, net in (("val", t.raw), ("ema", t.ema.module if t.ema else None)):
        result = evaluate(net, val_loader, args, d, seen, stop) if net is not None else {}
        if result is None:
            return None
        metrics.update({f"{name}_{k}": v for k, v in result.items() if name == "val" or k != "images"})
    if d.rank == 0:  # best.pt first: a line in metrics.jsonl means the epoch is done with
        if max(metrics["val_top1"], metrics.get("ema_top1", 0)) > t.best:
            t.best = max(metrics["val_top1"], metrics.get("ema_top1", 0))
            shutil.copyfile(os.path.join(args.output, "last.pt"), os.path.join(args.output, "best.pt.tmp-copy"))
            os.replace(os.path.join(args.output, "best.pt.tmp-copy"), os.path.join(args.output, "best.pt"))
        with open(os.path.join(args.output, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        tb.add("epoch", metrics["epoch"], metrics)
    log(d, "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return metrics


def leave(args, d, t, reason, stop):
    """After a stop: every rank waits until rank 0 has saved, then all exit the same way."""
    if d.distributed:
        dist.barrier()
    where = f"saved {args.output}/last.pt at step {t.step}; continue with: "
    if reason == "signal":
        log(d, f"stopped by signal {stop.signum or signal.SIGTERM}; {where}{config.command(args, resume='auto')}")
        sys.exit(128 + (stop.signum or signal.SIGTERM))
    if reason:  # a data error (its line is above) or a message
        raise UserError(f"{'stopped on a data error (the line above)' if reason == 'data error' else reason}; "
                        f"{where.replace('continue', 'fix it, then continue')}{config.command(args, resume='auto')}")
    log(d, f"stopped at --max-steps {args.max_steps}; {where}{config.command(args, ['max_steps'], resume='auto')}")


def train(args, d, t, loaders, tb):
    _, _, train_loader, sampler, val_loader = loaders
    stop, seen, metrics = StopRequested(), set(), None
    log(d, f"{args.model}: {t.config['num_classes']} classes, {d.world} process(es) on {d.device}"
        f"{' (DDP)' if d.distributed else ''}, global batch {args.global_batch} = {args.batch_size} x {t.accum} "
        f"micro-batches x {d.world}, peak lr {t.peak_lr:.4g}, "
        f"amp {args.amp}, {t.steps_per_epoch} steps/epoch x {args.epochs} epochs, from step {t.step} -> {args.output}")
    if args.resume and os.path.realpath(args.resume) != os.path.realpath(os.path.join(args.output, "last.pt")):
        save_last(args, d, t)  # the run continues in OUTPUT
    if val_loader is not None:
        pending, t.best, metrics = resume_metrics(args.output, t.step, t.steps_per_epoch, t.best, d)
    if val_loader is not None and pending:
        metrics = validate(args, d, t, {}, val_loader, seen, tb, stop)
        if metrics is None:  # a stop signal during validation: the epoch is saved, exit now
            return leave(args, d, t, "signal", stop)
    while t.step < t.total_steps and not (args.max_steps and t.step >= args.max_steps):
        if sampler is not None:
            sampler.set_epoch(t.step // t.steps_per_epoch, t.step % t.steps_per_epoch)
        stats, reason = train_epoch(args, d, t, train_loader, stop, seen, tb)
        at_end = t.step % t.steps_per_epoch == 0
        if at_end and d.distributed:
            broadcast_buffers(t.models(), d.device)
        check_finite(t.models(), t.step, d)
        save_last(args, d, t)  # the trained epoch is on disk before validation starts
        if at_end and reason is None and val_loader is not None:
            metrics = validate(args, d, t, stats, val_loader, seen, tb, stop)
            reason = None if metrics is not None else "signal"  # a stop during validation: exit now
        if reason or not at_end:
            return leave(args, d, t, reason, stop)
    if t.step < t.total_steps:  # --max-steps at an epoch's end
        return leave(args, d, t, None, stop) or metrics
    if d.rank == 0 and metrics is not None:
        use_ema = metrics.get("ema_top1", -1) > metrics["val_top1"]
        save_checkpoint((t.ema.module if use_ema else t.raw).state_dict(), os.path.join(args.output, "model.pt"))
        log(d, f"done: {args.output}/model.pt ({'EMA' if use_ema else 'raw'} weights), best top-1 {t.best:.2f}%")
    return metrics


def evaluate_only(args, d, t, val_loader):
    for s in (signal.SIGTERM, signal.SIGINT):  # nothing to save: a signal ends it at once
        signal.signal(s, signal.SIG_DFL)
    result = {"checkpoint": args.resume}
    for name, net in (("val", t.raw), ("ema", t.ema.module if t.ema else None)):
        if net is not None:
            result.update({f"{name}_{k}": v for k, v in evaluate(net, val_loader, args, d, set()).items()})
    log(d, json.dumps(result))
    return result


def main(argv=None):
    rank, lock = int(os.environ.get("RANK", 0)), None
    try:
        args = config.get_args(argv)
        if args.dry_run:  # nothing is read, created or started
            config.split_batch(args, int(os.environ.get("WORLD_SIZE", 1)))
            print(json.dumps(config.resolved(args, int(os.environ.get("WORLD_SIZE", 1)))))
            return None
        d = setup_distributed(args.device)
        args.amp, error = args.amp or amp_default(d.device), None
        args.channels_last = d.device.type == "cuda" if args.channels_last is None else args.channels_last
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:  # each phase may fail on one rank alone: all ranks learn of it, and the failing one says why
            lock = claim_output(args.output) if d.rank == 0 and not args.eval_only else None
            args.resume = resolve_resume(args) if d.rank == 0 else None
        except UserError as e:
            error = e
        agree_on_error(error, d)
        args.resume = share(args.resume, d)
        try:
            t, loaders, error = *build(args, d), None
        except UserError as e:
            error = e
        agree_on_error(error, d)
        agree_on_step(t.step, d)
        if not args.eval_only:  # every rank: the record gathers each one's host and device
            runtime.record_run(args.output, config.resolved(args, d.world), sys.argv[:1] + args.argv, d)
        if d.distributed:  # DDP's constructor broadcasts rank 0's (restored) weights to all
            t.net = torch.nn.parallel.DistributedDataParallel(t.raw, device_ids=[d.device.index] if
                                                              d.device.type == "cuda" else None)
            t.ddp = t.net
        t.net = torch.compile(t.net) if args.compile else t.net
        on = args.tensorboard and d.rank == 0 and not args.eval_only  # one writer; --eval-only writes no files
        tb = runtime.Scalars(os.path.join(args.output, "tb") if on else None, t.step)
        with runtime.loader_deaths_as_errors(args.workers), tb:  # in validation; training's step saves first
            return evaluate_only(args, d, t, loaders[4]) if args.eval_only else train(args, d, t, loaders, tb)
    except UserError as error:
        if str(error) and (rank == 0 or error.local):  # exit 3 (diverged): what the user can run instead
            print(f"error: {error}{config.after_divergence(args) if error.code == 3 else ''}", file=sys.stderr,
                  flush=True)
        sys.exit(error.code)
    finally:
        if lock is not None:
            lock.close()  # the output is free again (the kernel frees it anyway when the process ends)


if __name__ == "__main__":
    main()
