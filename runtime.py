"""What keeps a long run safe, for train.py: processes and DDP setup, stop signals, the ranks' per-step agreement,
buffer sync, atomic checkpoints and the output lock.

Needs only torch. The rules it keeps, from torch's own code: NCCL takes CUDA tensors only; every rank must make
the same collectives in the same order; torchrun sends SIGTERM to each rank's process group and SIGKILLs it 30 s
later (its --shutdown-timeout, where it has one); its children see WORLD_SIZE, even in a world of one.

    python -c "import runtime; print(runtime.cpu_count())"
"""
import collections
import errno
import fcntl
import json
import os
import signal
import sys
import threading

import torch
import torch.distributed as dist


class UserError(Exception):
    """One line for the user and exit `code` (2: bad input or data, 3: diverged); `local`: only this rank knows."""

    def __init__(self, message, code=2, local=False):
        super().__init__(message)
        self.code, self.local = code, local


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Under torchrun (WORLD_SIZE set) a process is `distributed` even in a world of one, so one GPU exercises the same
# process group, DDP and collectives as eight.
Dist = collections.namedtuple("Dist", "rank world device distributed")


def setup_distributed(device_name=None):
    distributed = "WORLD_SIZE" in os.environ
    kind = device_name or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if kind == "cuda" else kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        return Dist(dist.get_rank(), dist.get_world_size(), device, True)
    return Dist(0, 1, device, False)


def agree_on_error(error, d):
    """After a phase where any rank may fail alone (setup): every rank learns whether one did, and exits with it.
    The failing rank says why (rank 0 first, so a mistake all ranks share is said once); the others exit quietly."""
    if d.distributed:
        failed = torch.zeros(2, device=d.device)
        if error is not None:
            failed.fill_(1.0)
            failed[1].fill_(float(d.rank == 0))
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed[0] and (error is None or (failed[1] and d.rank != 0)):
            raise UserError("", code=error.code if error else 2, local=True)
    if error is not None:
        error.local = True
        raise error


# What SLURM, Kubernetes, a closed terminal and torchrun (which forwards TERM, INT, HUP and QUIT) send before a kill;
# USR1 is what `sbatch --signal=USR1@120` sends.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
                     if hasattr(signal, name))


class StopRequested:
    """A stop signal sets a flag the ranks vote on; the run saves and exits with 128 + the signal."""

    def __init__(self):
        self.signum = 0
        for s in STOP_SIGNALS:
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        self.signum = signum


class Vote:
    """The ranks' agreement on flags (e.g. stop signal, data error, save now) at every step, without stalling the
    GPU: each call starts an all-reduce (MAX) of this rank's flags and returns the previous call's result, so every
    rank acts at the same step, at most one step after any rank raised a flag. Alone, flags come back at once."""

    def __init__(self, d, n):
        self.d, self.n, self.pending = d, n, None

    def __call__(self, *flags):
        if not self.d.distributed:
            return flags
        tensor = torch.zeros(self.n, device=self.d.device)
        for i, flag in enumerate(flags):
            if flag:
                tensor[i].fill_(float(flag))  # a scalar fill: no host-to-device copy, no sync
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, async_op=True).wait()  # NCCL: the stream waits, not the host
        host = tensor.to("cpu", non_blocking=True)
        event = torch.cuda.Event() if tensor.is_cuda else None
        if event is not None:
            event.record()
        previous, self.pending = self.pending, (host, event)
        return self.read(previous)

    def read(self, pending):
        if pending is None:
            return (0,) * self.n
        host, event = pending
        if event is not None:
            event.synchronize()  # waits for the step that started it, not for the one queued since
        return tuple(int(x) for x in host.tolist())

    def drain(self):
        """The last call's result: every rank calls it once after its last vote."""
        flags, self.pending = self.read(self.pending), None
        return flags


def broadcast_buffers(modules, device):
    """Rank 0's BatchNorm statistics to all ranks, before evaluating and saving. Only the models' own buffers
    travel, and each must be on the training device: NCCL takes CUDA tensors only (torch's AveragedModel keeps a
    CPU step counter among its buffers: broadcasting all of it crashed every multi-GPU run)."""
    for module in modules:
        for buffer in module.buffers():
            if buffer.device != device:
                raise RuntimeError(f"bug: a buffer on {buffer.device} cannot join a collective on {device}")
            dist.broadcast(buffer, 0)


def claim_output(folder):
    """OUTPUT for one run at a time: it must be writable and not locked by another run (a POSIX lock, released by
    the kernel when the holder ends and not inherited by loader workers); temporary files of killed saves go."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, "lock"), "w")
    except OSError as error:
        raise UserError(f"cannot write to --output {folder}: {error.strerror}") from None
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise UserError(f"cannot lock --output {folder}/lock: {error.strerror}") from None
        raise UserError(f"another run is using --output {folder} (it holds {folder}/lock): wait for it, stop it, "
                        "or choose another --output") from None
    for name in os.listdir(folder):
        if ".tmp-" in name:
            os.remove(os.path.join(folder, name))
    return lock


def save_checkpoint(obj, path):
    """Atomic: a temporary file, flushed to disk, renamed over the old one. A kill leaves the old file or the new."""
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
        raise UserError(f"--resume: no such file {path}") from None
    except Exception as error:  # a torn or foreign file: say which and why
        raise UserError(f"--resume: cannot load {path}: {type(error).__name__}: {str(error)[:200]}") from None


def ignore_signals_not_from(main_pid, worker_id):
    """A loader worker's signal handling: SIGTERM from the main process (the loader shutting it down) ends it, as
    in torch's own worker; SIGTERM and SIGINT from anyone else are ignored. SLURM's step signals, torchrun (which
    signals each rank's whole process group) and Ctrl-C reach the workers too; torch's worker would die of them and
    the main process would get torch's 'worker killed' error at whatever line it is on. This way the workers keep
    serving batches while the main process finishes its step, votes and saves (train.py's StopRequested)."""
    if not hasattr(signal, "sigwaitinfo"):  # macOS and Windows lack it: torch's default handling stays
        return
    signals = set(STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # delivered to the waiting thread below, not to a handler

    def wait_for_signals():
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_signo == signal.SIGTERM and info.si_pid == main_pid:
                os._exit(0)

    threading.Thread(target=wait_for_signals, daemon=True).start()


def mix_seed(*values):
    """A seed from small non-negative integers (splitmix64 over them). torch's CPU generator keeps only the low 32
    bits of a seed, so plain arithmetic such as epoch * 2**32 + index would repeat the same draws every epoch."""
    h = 0
    for v in values:
        h = ((h ^ v) + 0x9E3779B97F4A7C15) % 2**64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) % 2**64
        h ^= h >> 31
    return h % 2**63


def report_problems(problems, seen):
    """Warn once per unreadable file; a read or transform error is fatal (returns True) after its one line."""
    fatal = False
    for kind, message in problems:
        if kind == "unreadable" and message not in seen:
            seen.add(message)
            warn(f"warning: skipping unreadable image {message}")
        elif kind != "unreadable":
            warn(f"error: {message}")
            fatal = True
    return fatal


def check_finite(modules, step):
    """Never save NaN/inf weights: a run that ends with them is a failure, not a result."""
    tensors = [x for m in modules for x in m.state_dict().values() if x.is_floating_point()]
    if not torch.stack([x.isfinite().all() for x in tensors]).all():
        raise UserError(f"the weights hold NaN/inf at step {step}: not saved. Try a lower --lr or --amp bf16", code=3)


def resume_metrics(output, step, steps_per_epoch, best, d):
    """On a (re)start, rank 0 keeps the metrics.jsonl lines of the epochs the checkpoint has done. Returns, the same on
    every rank, whether the last of them still needs its validation (the checkpoint at an epoch's end is written
    before it, and a stop may have cut it short); and, for rank 0, the best score so far and the last line."""
    done, path, lines = step // steps_per_epoch, os.path.join(output, "metrics.jsonl"), []
    if d.rank == 0:
        for line in open(path).readlines() if os.path.exists(path) else []:
            try:
                lines += [m for m in [json.loads(line)] if m["epoch"] <= done]
            except (ValueError, KeyError, TypeError):  # a line torn by a kill
                pass
        with open(path, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in lines)
    pending = torch.tensor(float(step % steps_per_epoch == 0 < done and not any(m["epoch"] == done for m in lines)),
                           device=d.device)
    if d.distributed:
        dist.broadcast(pending, 0)
    scores = [max(m.get("val_top1", 0), m.get("ema_top1", 0)) for m in lines]
    return bool(pending), max([best] + scores), (lines[-1] if lines else None)  # the last line: rank 0's


def resolve_resume(args):
    """Rank 0 decides what a run continues from (every rank then takes its word): --resume auto is OUTPUT/last.pt
    if there is one. A fresh run, or one from another checkpoint, may not write over the run that OUTPUT holds."""
    last = os.path.join(args.output, "last.pt")
    if args.resume == "auto":
        if not os.path.exists(last) and args.eval_only:
            raise UserError(f"--eval-only --resume auto: there is no {last} to score")
        return last if os.path.exists(last) else None
    if not args.eval_only and os.path.exists(last) and (not args.resume or
                                                        os.path.realpath(args.resume) != os.path.realpath(last)):
        raise UserError(f"--output {args.output} already holds a run (last.pt): continue it with --resume auto, "
                        "or choose another --output")
    return args.resume


def share(value, d):
    """Rank 0's value on every rank."""
    if d.distributed:
        box = [value]
        dist.broadcast_object_list(box, 0)
        value = box[0]
    return value


def agree_on_step(step, d):
    """Every rank must continue from the same step (each loaded the checkpoint on its own)."""
    if d.distributed:
        steps = torch.tensor([float(step), -float(step)], device=d.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if steps[0] != -steps[1]:
            raise UserError(f"the processes resumed at different steps ({int(-steps[1])} to {int(steps[0])}): --output "
                            "and --resume must be on a file system that every node sees")


def amp_default(device):
    """bf16 where the GPU has it in hardware (not emulated, as on V100 and T4), else fp16; off on the CPU."""
    if device.type != "cuda":
        return "off"
    try:
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    except TypeError:  # an older torch, which did not count emulation
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def log(d, *items):
    if d.rank == 0:
        print(*items, flush=True)


def warn(message):
    print(message, file=sys.stderr, flush=True)
