"""train.py's command line: its flags, the recipes (named sets of defaults), checks on every value, and what a
checkpoint fixes on resume (the recipe flags and the global batch).

Needs only torch (for the model names, model.py). train.py is its user:

    python train.py --help
"""
import argparse
import math
import os
import shlex
import sys

import model as models
from runtime import UserError, cpu_count

# --recipe: named sets of defaults; flags given on the command line still win. Sources, and what we do
# differently from each, are in README's "Recipes". The parser's own defaults are torchvision's V2 recipe. A recipe
# fixes the global batch; --batch-size is what one process fits, and gradient accumulation makes up the rest.
RECIPES = {
    # "ResNet strikes back" A3 (Wightman, Touvron, Jegou 2021, arXiv 2110.00476, table 1; timm's rsb-a3 config):
    # 78.1% top-1 after 100 epochs (theirs). LAMB at 8e-3 for a global batch of 2048: --lr is per 1024 images.
    "a3": dict(epochs=100, global_batch=2048, batch_size=256, opt="lamb", lr=4e-3, weight_decay=0.02,
               warmup_epochs=5, decay="cosine", loss="bce", bce_threshold=0.2, label_smoothing=0.0, mixup=0.1,
               cutmix=1.0, auto_augment="ra", ra_magnitude=6, interpolation="bicubic", random_erase=0.0,
               train_res=160, val_res=224, val_resize=235, val_interpolation="bicubic", ema=False,
               zero_init_residual=True),
    # torchvision's V2 (80.858% after 600 epochs, theirs): 8 x 128 images, lr 0.5, repeated augmentation (4 reps).
    "v2": dict(epochs=600, global_batch=1024, batch_size=128, ra_reps=4),
    # Our imagenette proxy (10 classes, 128 px, 5 epochs; BENCHMARKS "The SGD recipe, 5 epochs").
    "nette5": dict(epochs=5, global_batch=64, batch_size=64, lr=4.0, warmup_epochs=2, decay="linear",
                   weight_decay=5e-5, mixup=0.0, cutmix=0.0, auto_augment="none", random_erase=0.0, min_scale=1.0,
                   train_res=128, val_res=128, val_resize=128, zero_init_residual=True, ema=False),
    # The built-in demo (no --data): 2-3 minutes on 2 CPU cores (BENCHMARKS, "Demo").
    "demo": dict(epochs=6, global_batch=32, batch_size=32, lr=2.0, zero_init_residual=True, warmup_epochs=1,
                 weight_decay=5e-5, label_smoothing=0.0, mixup=0.0, cutmix=0.0, auto_augment="none", random_erase=0.0,
                 min_scale=0.5, train_res=48, val_res=48, val_resize=48, workers=2, output="runs/demo"),
}
# The flags a checkpoint fixes: on resume they come from it, and a different value on the command line is refused.
RECIPE = ("recipe", "model", "epochs", "global_batch", "opt", "lr", "momentum", "weight_decay", "warmup_epochs",
          "decay", "loss", "bce_threshold", "label_smoothing", "mixup", "cutmix", "auto_augment", "ra_magnitude",
          "interpolation", "random_erase", "min_scale", "train_res", "val_res", "val_resize", "val_interpolation",
          "ra_reps", "zero_init_residual", "ema", "ema_half_life", "seed", "sync_bn")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{message} (python train.py --help lists the flags)")


def finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def get_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = ArgumentParser(description="Train ResNet-50 from scratch.", allow_abbrev=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data", help="ImageNet-layout folder (DATA/train/<class>, DATA/val/<class>), 'synthetic', or none: the demo")
    a("--demo-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "resnet50-demo-v3"), help="demo set folder")
    a("--recipe", choices=sorted(RECIPES), help="named defaults (README, Recipes): a3 with --data, demo without")
    a("--model", default="resnet50", choices=sorted(models.MODELS), help="resnet50: model.py; tv_resnet50: torchvision")
    a("--epochs", type=int, default=100, help="training epochs")
    a("--global-batch", type=int, default=1024, help="images per optimiser step, over all processes")
    a("--batch-size", type=int, default=256, help="most images one process fits in a micro-batch")
    a("--opt", default="sgd", choices=["sgd", "lamb"], help="SGD with momentum, or LAMB (lamb.py)")
    a("--lr", type=finite, default=0.5, help="peak LR per 1024 images of global batch (linear scaling)")
    a("--momentum", type=finite, default=0.9, help="SGD momentum")
    a("--weight-decay", type=finite, default=2e-5, help="weight decay on conv and fc weights, none on BN and biases")
    a("--warmup-epochs", type=finite, default=5, help="linear warmup epochs, then --decay to 0; set every step")
    a("--decay", default="cosine", choices=["cosine", "linear"], help="LR decay to 0 at the last step")
    a("--loss", default="ce", choices=["ce", "bce"], help="softmax cross-entropy, or binary cross-entropy (timm's)")
    a("--bce-threshold", type=finite, default=0.2, help="--loss bce: targets above this become 1, the rest 0")
    a("--label-smoothing", type=finite, default=0.1, help="label smoothing")
    a("--mixup", type=finite, default=0.2, help="mixup alpha (0 = off)")
    a("--cutmix", type=finite, default=1.0, help="cutmix alpha (0 = off); with both on, one of the two per batch")
    a("--auto-augment", default="ta_wide", choices=["ta_wide", "ra", "none"], help="TrivialAugmentWide, RandAugment")
    a("--ra-magnitude", type=int, default=9, help="RandAugment magnitude, 0-10 as timm's (2 ops per image)")
    a("--interpolation", default="bilinear", choices=["bilinear", "bicubic"], help="training crop resampling")
    a("--random-erase", type=finite, default=0.1, help="random erasing probability")
    a("--min-scale", type=finite, default=0.08, help="smallest RandomResizedCrop area fraction")
    a("--train-res", type=int, default=176, help="training crop size")
    a("--val-res", type=int, default=224, help="validation centre-crop size")
    a("--val-resize", type=int, default=232, help="validation resize of the shorter side, before the crop")
    a("--val-interpolation", default="bilinear", choices=["bilinear", "bicubic"], help="validation resize")
    a("--ra-reps", type=int, default=1, help="repeated augmentation: an epoch is 1/this of the images, each this often")
    a("--zero-init-residual", action=argparse.BooleanOptionalAction, default=False, help="zero each block's last BN")
    a("--ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of weights and buffers")
    a("--ema-half-life", type=finite, default=0.027, help="EMA half-life as a fraction of all training steps")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    a("--seed", type=int, default=0, help="random seed: weights, data order and augmentations depend only on it")
    a("--workers", type=int, default=None, help="loader processes per training process (default min(8, CPUs/procs))")
    a("--output", default="runs/r50", help="folder for checkpoints and metrics.jsonl (one run at a time)")
    a("--resume", help="checkpoint to continue from, or 'auto' for OUTPUT/last.pt if it exists")
    a("--init-from", help="a new run from these weights: model.pt, best.pt, last.pt or torchvision's resnet50")
    a("--amp", choices=["bf16", "fp16", "off"], help="autocast dtype (default bf16 on GPUs that have it, off on CPU)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC layout (default: on CUDA)")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--device", choices=["cuda", "cpu"], help="default: cuda when available (under torchrun, GPU LOCAL_RANK)")
    a("--eval-only", action="store_true", help="only score --resume's weights (raw and EMA) on DATA/val")
    a("--log-every", type=int, default=50, help="steps between progress lines (the loss is read only then)")
    a("--save-every-min", type=finite, default=0, help="also write last.pt every this many minutes (0 = per epoch)")
    a("--max-steps", type=int, default=0, help="stop after this many steps in all, resumable (0 = no limit)")
    a("--max-unreadable", type=finite, default=0.01, help="stop when more than this share of an epoch is unreadable")
    a("--dry-run", action="store_true", help="print the resolved settings as JSON and exit, touching nothing")
    a("--tensorboard", action="store_true", help="also write scalars to OUTPUT/tb (needs: pip install tensorboard)")
    args = p.parse_args(argv)
    args.recipe = args.recipe or ("a3" if args.data else "demo")
    p.set_defaults(**RECIPES[args.recipe])
    args = p.parse_args(argv)
    args.recipe = args.recipe or ("a3" if args.data else "demo")
    given = {token.split("=")[0] for token in argv if token.startswith("--")}
    args.explicit = {x.dest for x in p._actions if given & set(x.option_strings)}
    args.argv, args.switches = argv, {o for x in p._actions if x.nargs == 0 for o in x.option_strings}  # command()
    check_args(args)
    return args


def check_args(args):
    def need(ok, message):
        if not ok:
            raise UserError(message)
    for name in ("epochs", "batch_size", "global_batch", "train_res", "val_res", "val_resize", "log_every", "lr",
                 "ema_half_life", "ra_reps"):
        need(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    need(args.seed < 2**63, f"--seed must be below 2**63, got {args.seed}")
    for name in ("weight_decay", "warmup_epochs", "mixup", "cutmix", "save_every_min", "max_steps", "seed"):
        need(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    need(args.batch_size >= 2, "--batch-size must be at least 2: BatchNorm needs two images per process")
    need(0 <= args.label_smoothing < 1 and 0 <= args.random_erase <= 1 and 0 <= args.momentum < 1,
         "--label-smoothing and --momentum must be in [0, 1), --random-erase in [0, 1]")
    need(0 < args.min_scale <= 1 and 0 <= args.max_unreadable <= 1, "--min-scale in (0, 1], --max-unreadable in [0, 1]")
    need(0 <= args.bce_threshold < 1 and 0 <= args.ra_magnitude <= 10, "--bce-threshold in [0, 1), --ra-magnitude 0-10")
    need(args.warmup_epochs <= args.epochs, f"--warmup-epochs {args.warmup_epochs}{origin(args, 'warmup_epochs')} "
         f"exceeds --epochs {args.epochs}{origin(args, 'epochs')}")
    need(args.val_resize >= args.val_res, f"--val-resize {args.val_resize}{origin(args, 'val_resize')} is below "
         f"--val-res {args.val_res}{origin(args, 'val_res')}: the centre crop would not fit (torchvision's eval "
         "resizes to 232 or 256, then crops 224)")
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    args.workers = min(8, max(1, cpu_count() // procs - 1)) if args.workers is None else args.workers
    need(args.workers >= 0, f"--workers must not be negative, got {args.workers} (0: load in the training process)")
    need(args.workers <= cpu_count(), f"--workers {args.workers}: this machine has {cpu_count()} CPUs for it")
    need(not args.eval_only or args.resume, "--eval-only needs --resume PATH (the weights to score)")
    need(not (args.init_from and args.resume), "--init-from starts a new run from weights, --resume continues one: "
         "give one of them (a run begun with --init-from continues with --resume alone)")
    need(not args.eval_only or args.data != "synthetic", "--eval-only scores DATA/val: --data synthetic has no "
         "validation images (give an ImageNet-layout folder)")


def origin(args, name):
    """' (from --recipe X)' where a value that a check refuses came from the recipe, not the command line."""
    return f" (from --recipe {args.recipe})" if name not in args.explicit and name in RECIPES[args.recipe] else ""


def check_platform(args, device_type, distributed):
    """What the flags (or a checkpoint's recipe) ask of the processes and devices, before anything is built."""
    whence = " (from the checkpoint's recipe)" if args.resume and "sync_bn" not in args.explicit else ""
    if args.sync_bn and distributed and device_type != "cuda":
        raise UserError(f"--sync-bn{whence} needs CUDA GPUs (torch's SyncBatchNorm runs on CUDA only): on the CPU "
                        "run without it")
    if args.sync_bn and distributed and args.compile:  # pytorch issues #107372 (errors), #161302 (graph breaks)
        raise UserError(f"--compile with --sync-bn{whence} under DDP: torch.compile breaks its graph at every "
                        "SyncBatchNorm and has open bugs with it; drop --compile")


def apply_contract(args, ckpt, world):
    """The recipe comes from the checkpoint; a flag given with another value is refused, naming it. --eval-only
    takes only the model and the val settings from it, and flags given win."""
    if args.eval_only:
        for name in ("model", "val_res", "val_resize", "val_interpolation") if isinstance(ckpt, dict) and "config" in \
                ckpt else ():
            saved = ckpt["config"].get(name, OLD_DEFAULTS.get(name))
            setattr(args, name, getattr(args, name) if name in args.explicit else saved)
        args.ema = isinstance(ckpt, dict) and ckpt.get("ema") is not None  # score the EMA weights where there are
        return
    if not isinstance(ckpt, dict) or ckpt.get("format") != 3:
        raise UserError(f"--resume {args.resume} is not a training checkpoint of this train.py (model.pt and older "
                        "checkpoints work with --eval-only; to train them further, start a new run with --init-from)")
    config = ckpt["config"]
    for name in RECIPE:
        saved = config.get(name, OLD_DEFAULTS.get(name))
        if name in args.explicit and getattr(args, name) != saved:
            flag = "--" + name.replace("_", "-")
            way_on = "" if name == "model" else f"; to train these weights with another {flag}, start a new run " \
                f"from them: --init-from {args.resume} in a new --output"  # a fresh schedule, the weights kept
            raise UserError(f"{flag} {getattr(args, name)} differs from {saved} in {args.resume}: a resumed run keeps "
                            f"its recipe (drop the flag, or start a new --output){way_on}")
        setattr(args, name, saved)


# What a checkpoint from before a flag existed trained with.
OLD_DEFAULTS = {"val_interpolation": "bilinear"}


def split_batch(args, world):
    """The recipe's global batch over `world` processes: args.batch_size becomes the largest micro-batch that
    divides a process's share and fits --batch-size, args.accum the micro-batches per step."""
    share, rest = divmod(args.global_batch, world)
    if rest:
        raise UserError(f"a global batch of {args.global_batch}{origin(args, 'global_batch')} does not split over "
                        f"{world} processes: choose a --global-batch that divides evenly (the LR scales with it)")
    args.batch_size = max(b for b in range(1, min(args.batch_size, share) + 1) if share % b == 0)
    if args.batch_size < 2:
        raise UserError(f"a micro-batch of {args.batch_size}: BatchNorm needs two images a process (raise "
                        "--batch-size or --global-batch)")
    args.accum = share // args.batch_size


def resolved(args, world):
    """--dry-run: every setting after the recipe and the flags, with the micro-batch, accumulation and peak LR."""
    settings = {k: v for k, v in sorted(vars(args).items())
                if k not in ("explicit", "dry_run", "batch_size", "accum", "argv", "switches")}
    return {**settings, "world": world, "micro_batch": args.batch_size, "accumulation_steps": args.accum,
            "peak_lr": args.lr * args.global_batch / 1024}


def command(args, drop=(), **changes):
    """The train.py command line to run next: this run's own arguments without the flags in `drop` and `changes`,
    then `changes` ({dest: value}). A run that continued a checkpoint took its recipe from it: for a fresh run
    (no 'resume' in changes) the recipe flags that differ from the recipe's defaults are written out too."""
    skip, words, tokens = {"--" + n.replace("_", "-") for n in (*drop, *changes)}, [], list(args.argv)
    if "resume" in changes:  # the run's own weights are in its checkpoint, and --resume refuses --init-from
        skip.add("--init-from")
    while tokens:
        token = tokens.pop(0)
        name = token.split("=")[0]
        value = [tokens.pop(0)] if name.startswith("--") and "=" not in token and name not in args.switches and \
            tokens else []
        words += [token] + value if name not in skip else []
    if args.resume and "resume" not in changes:
        defaults = vars(get_args(["--recipe", args.recipe, "--workers", "0"]))
        for name in (n for n in RECIPE if n not in changes and n not in drop):
            flag, value = "--" + name.replace("_", "-"), getattr(args, name)
            if name not in args.explicit and value != defaults[name] or name == "recipe" and "recipe" not in \
                    args.explicit and value != ("a3" if args.data else "demo"):
                words += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    for name, value in changes.items():
        words += ["--" + name.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    launcher = "torchrun [its flags as before]" if "WORLD_SIZE" in os.environ else "python"
    return f"{launcher} train.py {shlex.join(words)}"


def after_divergence(args):
    """What a diverged run (exit 3) can do: a resumed run keeps its --lr, and its --output holds the run; so a new
    run, from scratch or from the last good weights (--init-from), in a new folder."""
    lr, last = args.lr / 2, os.path.join(args.output, "last.pt")
    output = f"{args.output.rstrip(os.sep)}-lr{lr:g}"
    advice = (f" A resumed run keeps its --lr: start again with a lower one in a new folder, e.g. "
              f"`{command(args, drop=('resume',), lr=lr, output=output)}`")
    if os.path.exists(last):  # or keep what was learnt: its weights, a fresh schedule at the lower --lr
        advice += (f"; or go on from the last good weights: "
                   f"`{command(args, drop=('resume',), lr=lr, output=output, init_from=last)}`")
    if args.amp == "fp16":
        advice += f"; or continue it without fp16: `{command(args, resume='auto', amp='bf16')}`"
    return advice + " (a longer --warmup-epochs helps too)."
