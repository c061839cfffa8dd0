"""What keeps a long run safe, for train.py: processes and DDP setup, stop signals, the ranks' per-step agreement,
buffer sync, atomic checkpoints and the output lock; and what a run keeps of itself: OUTPUT/run.json, TensorBoard
scalars (--tensorboard), the weights a new run starts from (--init-from).

Needs only torch. The rules it keeps, from torch's own code: NCCL takes CUDA tensors only; every rank must make
the same collectives in the same order; torchrun sends SIGTERM to each rank's process group and SIGKILLs it 30 s
later (its --shutdown-timeout, where it has one); its children see WORLD_SIZE, even in a world of one.

    python -c "import runtime; print(runtime.cpu_count())"
"""
import collections
import contextlib
import datetime
import errno
import fcntl
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time

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
# How long a rank waits in a collective before the job fails. Rank 0 alone saves checkpoints (a ResNet-50 with its
# optimiser state and EMA: ~300 MB) while the others wait in the next collective, and a loaded shared file system
# can take minutes for that; NCCL's default of 10 minutes would kill a healthy job during a slow save.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


def setup_distributed(device_name=None):
    distributed = "WORLD_SIZE" in os.environ
    kind = device_name or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if kind == "cuda" else kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed:  # the timeout: see COLLECTIVE_TIMEOUT
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT,
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


# Where POSIX locks do not work: Lustre mounted noflock (ENOSYS), NFS without its lock manager (ENOLCK), some FUSE
# file systems (EOPNOTSUPP, ENOTSUP). There a run goes on without the lock, and says so.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class OutputLock:
    """The held OUTPUT/lock. close() frees it; if the run wrote nothing else there (it failed before training), the
    lock file and the folders this run created go too."""

    def __init__(self, folder, file, created):
        self.folder, self.file, self.created = folder, file, created  # created: lock file and folders, deepest last

    def close(self):
        try:
            if self.created and os.listdir(self.folder) == ["lock"]:
                os.remove(os.path.join(self.folder, "lock"))  # still held: no other run takes it meanwhile
                for path in reversed(self.created[1:]):
                    os.rmdir(path)
        except OSError:
            pass  # only tidying
        self.file.close()


def claim_output(folder, requeue_wait_s=600, poll_s=15):
    """OUTPUT for one run at a time: it must be a writable folder and not locked by another run (a POSIX lock,
    released by the kernel when the holder ends and not inherited by loader workers); temporary files of killed
    saves go. The lock file names its holder (host, pid, SLURM job). A requeued SLURM job (SLURM_RESTART_COUNT set)
    waits up to requeue_wait_s for a lock that NFS or Lustre may still keep for its dead node (below the collective
    timeout, as the other ranks wait meanwhile)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--output {folder} is a file, not a folder: choose a folder for the run")
    path, created, parent = os.path.join(folder, "lock"), [], os.path.abspath(folder)
    while not os.path.exists(parent):
        created, parent = [parent] + created, os.path.dirname(parent)
    created = [path] + created if not os.path.exists(path) else []
    try:
        os.makedirs(folder, exist_ok=True)
        lock = OutputLock(folder, open(path, "a+"), created)  # "a+", not "w": that would erase the holder's name
    except OSError as error:
        raise UserError(f"cannot write to --output {folder}: {error.strerror}") from None
    requeued = os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")
    deadline = time.monotonic() + (requeue_wait_s if requeued else 0)
    waited = False
    while not try_lock(lock.file, folder):
        lock.file.seek(0)
        holder = " ".join(lock.file.read().split()) or "another process"
        if time.monotonic() >= deadline:
            lock.file.close()
            raise UserError(f"another run is using --output {folder} ({holder} holds {folder}/lock"
                            f"{f', still after {requeue_wait_s:g} s' if requeued else ''}): wait for it, stop it, or "
                            "choose another --output") from None
        if not waited:
            warn(f"warning: {holder} holds {folder}/lock; a requeued job waits up to {requeue_wait_s:g} s for it "
                 "(NFS and Lustre may keep a dead node's lock for a while)")
        waited = True
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
    lock.file.seek(0)
    lock.file.truncate()
    job = os.environ.get("SLURM_JOB_ID")
    lock.file.write(f"host {socket.gethostname()} pid {os.getpid()}{f' SLURM job {job}' if job else ''}\n")
    lock.file.flush()
    for name in os.listdir(folder):
        if ".tmp-" in name:
            os.remove(os.path.join(folder, name))
    return lock


def try_lock(file, folder):
    """True if this process now holds the lock, or the file system has no locks (said once); False if another does."""
    try:
        fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in NO_LOCKS:
            warn(f"warning: --output {folder} is on a file system without POSIX locks "
                 f"({errno.errorcode.get(error.errno, error.errno)}): nothing stops a second run from using it")
            return True
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise UserError(f"cannot lock --output {folder}/lock: {error.strerror}") from None
        return False


def save_checkpoint(obj, path):
    """Atomic: a temporary file, flushed to disk, renamed over the old one. A kill leaves the old file or the new."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, flag="--resume"):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{flag}: no such file {path}") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path} is a folder: give the checkpoint file (e.g. {path}/last.pt)") from None
    except Exception as error:  # a torn or foreign file: say which and why
        raise UserError(f"{flag}: cannot load {path}: {why_unloadable(path, error)}") from None


def why_unloadable(path, error):
    """One plain reason for torch.load's failure (its own messages run to paragraphs, with terminal colours)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds a pickled Python object ({found.group(1)}), not only tensors: train.py loads plain "
                "state_dicts (torch.load with weights_only=True); save the object's state_dict() instead")
    with open(path, "rb") as f:
        head, size = f.read(4), os.fstat(f.fileno()).st_size
    if head.startswith(b"PK"):
        return (f"the file is truncated or corrupt ({size} bytes): a copy cut short? Copy it again, or use another "
                "checkpoint")
    if size == 0 or not head.startswith(b"\x80"):
        return f"not a PyTorch checkpoint ({size} bytes)"
    return f"{type(error).__name__}: {' '.join(text.split())[:200]}"


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


class LoaderWorkerLost(Exception):
    """A loader worker died (most often the out-of-memory killer's SIGKILL): the one line to say."""


def loader_batches(loader, workers):
    """iter(loader), raising a worker's death as LoaderWorkerLost from next(), where train.py can cut the step
    cleanly. torch's SIGCHLD handler would raise it wherever the main process is (mid optimiser step, mid save), so
    it goes; the loader then finds the dead worker itself within seconds, or a batch's shared memory fails to come
    from it (a ConnectionError)."""
    iterator = None
    while True:
        try:
            if iterator is None:  # a persistent loader's iter() already waits for each worker
                iterator = iter(loader)
                handler = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
                if getattr(handler, "__module__", "") == "torch.utils.data._utils.signal_handling":
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            batch = next(iterator)
        except StopIteration:
            return
        except (RuntimeError, ConnectionError) as error:
            message = loader_worker_lost(error, workers)
            if message is None:
                raise
            raise LoaderWorkerLost(message) from None
        yield batch


def loader_worker_lost(error, workers):
    """For the DataLoader's errors when a worker died, one line saying what most likely happened; else None."""
    if isinstance(error, ConnectionError) and workers:  # only workers send tensors over a connection
        what = f"a loader worker stopped answering ({type(error).__name__}: {error})"
    elif isinstance(error, RuntimeError) and re.match(r"DataLoader worker \(pid", str(error)):
        what = str(error).rstrip(". ")
    else:
        return None
    return (f"{what}: most likely the out-of-memory killer (SIGKILL; `dmesg` or the job's log says); try fewer "
            f"--workers (this run: {workers}) or more memory")


@contextlib.contextmanager
def loader_deaths_as_errors(workers):
    """A loader worker killed outside training's step (validation): one line and exit 2, not a traceback."""
    try:
        yield
    except (RuntimeError, ConnectionError) as error:
        message = loader_worker_lost(error, workers)
        if message is None:
            raise
        raise UserError(message, local=True) from None


def state_like_params(optimizer):
    """After optimizer.load_state_dict: each state tensor shaped like its parameter (momentum_buffer, exp_avg, ...)
    takes the parameter's memory layout. load_state_dict keeps the saved strides, so a resume that changes
    --channels-last (or --device) would hand fused SGD a buffer whose strides differ from its parameter's, which
    CUDA's fused kernel refuses."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and value.shape == param.shape and \
                    value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def weights_mismatch(model, state, name):
    """Why `state` does not load into `model` (--model `name`), in one line (torch's lists every key)."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        return f"it is not a state_dict of tensors but a {type(state).__name__}"
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        return (f"these are not weights of --model {name}: {len(missing)} of its {len(own)} tensors missing"
                f"{f' (e.g. {missing[0]})' if missing else ''}, {len(unexpected)} it lacks"
                f"{f' (e.g. {unexpected[0]})' if unexpected else ''}; give the --model they were trained as")
    for key in (k for k in own if own[k].shape != state[k].shape):
        if key.startswith("fc."):
            return (f"size mismatch for {key}: the weights score {state[key].shape[0]} classes, --data has "
                    f"{own[key].shape[0]} class folders")
        return f"size mismatch for {key}: {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in {name}"
    return None


def load_weights(model, path, name, d):
    """--init-from: a new run's starting weights, into `model` (freshly initialised, --model `name`), from a
    training checkpoint of train.py (last.pt, best.pt: its raw weights) or a plain state_dict (model.pt,
    torchvision's resnet50). Where only the class count differs (other data), fc keeps its fresh init: the old
    classes' scores mean nothing for the new ones. Any other mismatch is one line naming --model."""
    ckpt = load_checkpoint(path, "--init-from")
    state = ckpt["model"] if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) else ckpt
    own, fc = model.state_dict(), state.get("fc.weight") if isinstance(state, dict) else None
    if torch.is_tensor(fc) and "fc.weight" in own and fc.ndim == 2 and fc.shape[0] != own["fc.weight"].shape[0] \
            and fc.shape[1:] == own["fc.weight"].shape[1:]:
        state = {**state, "fc.weight": own["fc.weight"], "fc.bias": own["fc.bias"]}
        log(d, f"fc: checkpoint has {fc.shape[0]} classes, --data has {own['fc.weight'].shape[0]}: fc initialised anew")
    why = weights_mismatch(model, state, name)
    if why:
        raise UserError(f"--init-from {path}: {why}")
    model.load_state_dict(state)


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


def check_finite(modules, step, d=None):
    """Never save NaN/inf weights: a run that ends with them is a failure, not a result. BatchNorm statistics (and
    their EMA) are each rank's own between epoch ends, so under DDP the ranks agree (one all-reduce, which every rank
    makes wherever any does) and all exit together; a rank exiting alone would leave the others in a collective."""
    tensors = [x for m in modules for x in m.state_dict().values() if x.is_floating_point()]
    finite = torch.stack([x.isfinite().all() for x in tensors]).all().float()
    if d is not None and d.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        raise UserError(f"the weights or their BatchNorm statistics hold NaN/inf at step {step}"
                        f"{' on some process' if d is not None and d.distributed else ''}: not saved.", code=3)


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


# ------------------------------------------------------------------------- what a run keeps of itself

def record_run(output, settings, argv, d):
    """OUTPUT/run.json, {"runs": [...]}: what made this run, one entry per start (a resumed run appends its own, so
    the first start's stays). Every rank makes the one collective here (its host and device); rank 0 writes,
    atomically. A record that cannot be written is a warning: it is no reason to lose the run."""
    mine = (socket.gethostname(), device_name(d.device))
    ranks = [mine]
    if d.distributed:
        ranks = [None] * d.world
        dist.all_gather_object(ranks, mine)
    if d.rank != 0:
        return
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "argv": list(argv),
             **git_state(os.path.dirname(os.path.abspath(__file__))), "versions": versions(), "world": d.world,
             "hosts": [host for host, _ in ranks], "devices": [name for _, name in ranks], "settings": settings}
    path, runs = os.path.join(output, "run.json"), []
    try:
        with open(path) as f:
            runs = json.load(f)["runs"]
        runs = runs if isinstance(runs, list) else []
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):  # edited by hand? Kept aside, not written over
        warn(f"warning: {path} is not a run record; kept as {path}.unreadable, a new record begins")
        with contextlib.suppress(OSError):
            os.replace(path, f"{path}.unreadable")
    tmp = f"{path}.tmp-{os.getpid()}"  # claim_output removes one a kill left behind
    try:
        with open(tmp, "w") as f:
            json.dump({"runs": runs + [entry]}, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        warn(f"warning: cannot write {path} ({error.strerror}): the run goes on without its record")


def git_state(folder, timeout_s=5):
    """The code's commit and whether tracked files differ from it (untracked ones are not the code train.py runs);
    nothing where `folder` is not in a git checkout, git is missing or too slow (a loaded network file system)."""
    def git(*words):
        return subprocess.run(["git", "-C", folder, *words], capture_output=True, text=True, timeout=timeout_s,
                              check=True).stdout.strip()
    state = {}
    try:
        state["git_commit"] = git("rev-parse", "HEAD")
        state["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def versions():
    """The versions a run's numbers depend on; None where absent (CUDA, cuDNN and NCCL: those torch was built with)."""
    def get(read):
        try:
            return read()
        except Exception:  # not installed, or a build without it
            return None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": get(lambda: __import__("torchvision").__version__),
            "pillow": get(lambda: __import__("PIL").__version__), "cuda": torch.version.cuda,
            "cudnn": get(torch.backends.cudnn.version),
            "nccl": get(lambda: ".".join(map(str, torch.cuda.nccl.version())))}


def device_name(device):
    """The GPU's name, or the CPU's model where Linux tells it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return "cpu: " + next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return f"cpu: {platform.processor() or platform.machine()}"


class Scalars:
    """--tensorboard: scalars under `folder` for TensorBoard. Rank 0 passes OUTPUT/tb; the other ranks, and a run
    without the flag, pass None, and then every call does nothing. TensorBoard is not a requirement: imported only
    when asked for, and without the package one line says how to get it and the run goes on. A run resumed at
    `step` hides what a killed run wrote after its checkpoint (TensorBoard's purge_step), so no step shows twice."""

    def __init__(self, folder=None, step=0):
        self.writer = None
        if folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn("warning: --tensorboard needs the tensorboard package: pip install tensorboard")
                return
            self.writer = SummaryWriter(folder, purge_step=step + 1 if step else None)  # step itself: saved

    def add(self, group, x, values):
        """Each number in `values` as the scalar `group/name` at x (the global step, or the epoch)."""
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                    self.writer.add_scalar(f"{group}/{name}", value, x)
            if group == "epoch":  # an epoch's figures are worth seeing now, not at the writer's next flush
                self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()
