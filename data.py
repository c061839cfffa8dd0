"""Data for train.py: ImageNet-layout folders, per-sample seeded transforms, the sampler, loaders and bad files.

Needs torch, torchvision, pillow and runtime.py. train.py is its user; alone it checks and prepares a dataset folder:

    python data.py /imagenet            # class and image counts of DATA/train/<class>/* and DATA/val/<class>/*
    python data.py verify /imagenet     # decode every file on all CPUs: unreadable (exit 2), CMYK, grayscale, PNGs
    python data.py sort-val /imagenet/val --labels LOC_val_solution.csv   # flat val -> val/<wnid>/, Kaggle's labels
    python data.py sort-val /imagenet/val --labels ILSVRC2012_devkit_t12.tar.gz    # the devkit's labels (needs scipy)

Hidden files and folders (`._*`, `.DS_Store`, `.ipynb_checkpoints`: what macOS and Jupyter leave) are not data.

What each training image looks like depends only on (seed, epoch, sample index): the sampler hands out
(epoch, index) items, each transformed under its own seed, so neither the number of loader workers, nor their
lifetime, nor the number of processes changes the data, and a resumed run sees what it would have seen.
Training crops draw torchvision's RandomResizedCrop box from the JPEG header alone, decode at the smallest M/8 scale
that still covers the output size (simplejpeg, else PIL's `Image.draft`), resize with torch and flip: uint8 out, the
augmentation runs later, batched on the device (augment.py). Validation is torchvision's own
`Resize + CenterCrop` on the full decode, pixel for pixel, so top-1 compares with published figures. A file PIL
cannot decode is skipped and reported; an I/O error or a transform error stops the run.
"""
import argparse
import csv
import functools
import io
import math
import multiprocessing
import os
import signal
import sys
import tarfile
import time
import traceback
import warnings

import torch
from PIL import Image

import augment
import runtime

try:  # libjpeg-turbo with DCT-scaled decoding: README, "Data"; PIL does everything without it, slower
    import simplejpeg
except ImportError:
    simplejpeg = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# What PIL raises while decoding bytes already in memory: the file is corrupt, truncated, not an image, or a bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(Exception):
    """A problem with the user's data, not a bug: one line, exit 2."""


class Unreadable(Exception):
    """PIL could not decode this file: skip it and report it."""


# ------------------------------------------------------------------------------------------ folders and checks

def find_classes(split_dir):
    if not os.path.isdir(split_dir):
        raise DataError(f"no {os.path.basename(split_dir)}/ folder in {os.path.dirname(split_dir)}: expected "
                        "DATA/train/<class>/*.JPEG and DATA/val/<class>/* (README: ImageNet's val layout)")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files>")
    return classes


def list_images(split_dir, classes):
    """[(path, class_index)] sorted by class then file name; every class folder must hold at least one image. Images in
    subfolders of a class folder are not read: one line says how many."""
    samples, nested = [], 0
    for index, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
        files = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
        if not files:
            raise DataError(f"empty class folder {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(os.path.join(folder, f), index) for f in files]
        nested += sum(images_under(e.path) for e in entries if e.is_dir())
    if nested and os.environ.get("RANK", "0") == "0":  # once, not from every process under torchrun
        runtime.warn(f"note: {nested} images in subfolders of class folders in {split_dir} are not read "
                     f"(only {split_dir}/<class>/<image>)")
    return samples


def images_under(folder):
    count = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        count += sum(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") for f in files)
    return count


def scan_dataset(root, train=True):
    """Check DATA/train and DATA/val and return (classes, train_samples, val_samples). train=False (--eval-only)
    lists only val: its sorted class folders are the classes, as in training, where they must equal train's."""
    if not os.path.isdir(root):
        raise DataError(f"--data folder not found: {root}")
    classes = find_classes(os.path.join(root, "val"))
    trained = find_classes(os.path.join(root, "train")) if train else classes
    if classes != trained:
        only_train, only_val = sorted(set(trained) - set(classes))[:3], sorted(set(classes) - set(trained))[:3]
        raise DataError(f"train and val have different classes in {root}: only in train {only_train}, "
                        f"only in val {only_val} ({len(trained)} vs {len(classes)} folders)")
    train_samples = list_images(os.path.join(root, "train"), classes) if train else []
    return classes, train_samples, list_images(os.path.join(root, "val"), classes)


# ------------------------------------------------------------------------------------------------- transforms

def open_image(raw):
    """PIL image from bytes (header only; decoding comes later); not an image -> Unreadable."""
    try:
        return Image.open(io.BytesIO(raw))
    except DECODE_ERRORS as error:  # PIL names the buffer (<_io.BytesIO object at 0x...>): the caller names the file
        reason = str(error).split(" <_io.BytesIO")[0] + (": not an image PIL reads" if "BytesIO" in str(error) else "")
        raise Unreadable(f"{type(error).__name__}: {reason}") from None


def decode(image, draft_size=None):
    """Decode a PIL image to RGB (at a reduced JPEG scale that still covers draft_size); corrupt data -> Unreadable."""
    try:
        if draft_size is not None:
            image.draft("RGB", draft_size)  # no-op for non-JPEG files
        return image.convert("RGB")
    except DECODE_ERRORS as error:
        raise Unreadable(f"{type(error).__name__}: {error}") from None


def jpeg_size(raw):
    """(width, height) from the header: simplejpeg's where it reads it, else PIL's."""
    if simplejpeg is not None:
        try:
            height, width = simplejpeg.decode_jpeg_header(raw)[:2]
            return width, height
        except ValueError:
            pass
    return open_image(raw).size


def decode_at_least(raw, width, height):
    """uint8 [3, h, w] at the smallest libjpeg DCT scale with w >= width and h >= height (the full size for other
    formats). simplejpeg (libjpeg-turbo) where it can; PIL for CMYK, PNG, and JPEGs with recoverable errors."""
    if simplejpeg is not None:
        try:
            return torch.from_numpy(simplejpeg.decode_jpeg(raw, "RGB", min_height=height, min_width=width)).permute(
                2, 0, 1)
        except ValueError:  # not a JPEG, CMYK, or a warning in strict mode: PIL decides
            pass
    image = decode(open_image(raw), (width, height))
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3).permute(
        2, 0, 1)


def random_resized_crop_box(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, from the image size alone: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return left, top, w, h
    in_ratio = width / height  # fallback to a central crop, as torchvision does
    w, h = ((width, int(round(width / min(ratio)))) if in_ratio < min(ratio) else
            (int(round(height * max(ratio))), height) if in_ratio > max(ratio) else (width, height))
    return (width - w) // 2, (height - h) // 2, w, h


def decode_crop_resize(raw, box, size, interpolation="bilinear", full_size=None):
    """JPEG bytes -> uint8 [3, size, size]: decode only as much as the box needs, crop, resize (torch, antialiased).
    At a reduced scale the box snaps to the decoded pixel grid (at most half a decoded pixel, 4 at 1/8)."""
    left, top, w, h = box
    full_w, full_h = full_size or jpeg_size(raw)  # the caller may have read the header already
    image = decode_at_least(raw, math.ceil(full_w * size / w), math.ceil(full_h * size / h))
    # libjpeg scales by M/8 (M = 1..8) and rounds the size up: the scale is 8/M, not the ratio of the sizes.
    s = 8 / round(8 * (image.shape[2] / full_w if full_w >= full_h else image.shape[1] / full_h))
    x0, y0 = min(round(left / s), image.shape[2] - 1), min(round(top / s), image.shape[1] - 1)
    crop = image[:, y0:max(round((top + h) / s), y0 + 1), x0:max(round((left + w) / s), x0 + 1)]
    return torch.nn.functional.interpolate(crop[None], (size, size), mode=interpolation, antialias=True)[0]


class RandomResizedCropFlip:
    """The loader worker's whole job: bytes -> uint8 [3, size, size], torchvision's RandomResizedCrop box drawn from
    the header, decoded at a reduced scale where the box allows, resized, flipped with probability `hflip`.
    Augmentations run later, batched on the device (augment.py)."""

    def __init__(self, size, scale=(0.08, 1.0), interpolation="bilinear", hflip=0.5):
        self.size, self.scale, self.interpolation, self.hflip = size, scale, interpolation, hflip

    def __call__(self, raw):
        full_size = jpeg_size(raw)
        box = random_resized_crop_box(*full_size, scale=self.scale)
        image = decode_crop_resize(raw, box, self.size, self.interpolation, full_size)
        return image.flip(2) if torch.rand(1).item() < self.hflip else image


def val_transform(resize, size, interpolation="bilinear"):
    """torchvision's eval preset, exactly: Resize(resize) (PIL, antialiased; timm's A3: bicubic), CenterCrop(size)."""
    import torchvision.transforms as T
    return T.Compose([open_image, decode, T.Resize(resize, interpolation=T.InterpolationMode(interpolation)),
                      T.CenterCrop(size), T.PILToTensor()])


def device_augment(args):
    """The batched augmentation the recipe asks for, run on the device after the copy (augment.py); None if none."""
    steps = [augment.RandAugment(2, args.ra_magnitude, 0.5, 0.5, augment.MEAN_FILL, args.interpolation)
             if args.auto_augment == "ra" else augment.TrivialAugmentWide(interpolation=args.interpolation)
             if args.auto_augment == "ta_wide" else None,
             augment.RandomErasing(args.random_erase) if args.random_erase > 0 else None]
    steps = [s for s in steps if s is not None]
    return (lambda images, generator: functools.reduce(lambda x, s: s(x, generator), steps, images)) if steps else None


# -------------------------------------------------------------------------------------------- dataset, loader

class ImageList(torch.utils.data.Dataset):
    """Items (epoch, index) or index -> (uint8 image or None, label, problem): problem None, or ("unreadable" | "io" |
    "transform", message); train.py skips the first and stops on the others. With `substitute`, an unreadable image
    is replaced by another file's (weight 0 in the loss), so BatchNorm never sees copies or blanks in its batch."""

    def __init__(self, samples, transform, seed=0, substitute=False):
        self.samples, self.transform, self.seed, self.substitute = samples, transform, seed, substitute

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        epoch, index, copy = item if isinstance(item, tuple) else (0, item, 0)
        image, label, problem = self.load((epoch, index, copy, 0), index)
        for attempt in range(1, 4) if problem and problem[0] == "unreadable" and self.substitute else ():
            other = self.load((epoch, index, copy, attempt), (index + attempt * 7919) % len(self))
            if other[2] is None:
                return other[0], other[1], problem
        return image, label, problem

    def load(self, key, index):
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as error:
            return None, label, ("io", f"cannot read {path}: {error}")
        with torch.random.fork_rng(devices=[]):  # leave the process's own random state alone
            torch.default_generator.manual_seed(runtime.mix_seed(self.seed, *key))
            try:
                return self.transform(raw), label, None
            except Unreadable as error:
                return None, label, ("unreadable", f"{path} ({error})")
            except Exception as error:  # a bug, not a bad file: say where
                frame = traceback.extract_tb(error.__traceback__)[-1]
                return None, label, ("transform", f"transform failed on {path}: {type(error).__name__}: {error} "
                                                  f"({os.path.basename(frame.filename)}:{frame.lineno})")


def collate(batch, size):
    """(images uint8 [B,3,S,S], labels [B], weights [B], problems). The batch never shrinks: an image with a problem
    has weight 0 (a missing one becomes a copy of a good one, or the mean colour), so all ranks take the same step."""
    good = [i for i, (x, _, _) in enumerate(batch) if x is not None]
    mean = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1).expand(3, size, size)
    stand_in = [i if x is not None else good[i % len(good)] if good else None for i, (x, _, _) in enumerate(batch)]
    images = [batch[j][0] if j is not None else mean for j in stand_in]
    labels = [batch[j][1] if j is not None else 0 for j in stand_in]
    weights = torch.tensor([float(p is None) for _, _, p in batch])
    return torch.stack(images), torch.tensor(labels), weights, [p for _, _, p in batch if p is not None]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's (epoch, index, copy) items, micro-batch after micro-batch: a permutation per (seed, epoch), each
    image `reps` times in a row (repeated augmentation, Hoffer et al. 2020), cut into global batches of batch x world
    x accum. A global batch goes to V = world x accum "virtual ranks" (micro-batch m of rank r is v = m x world + r),
    v taking every V-th item: step k holds the same images however split, the BatchNorm groups are the same for 1
    process x 8 micro-batches as for 8 processes x 1, and an image's copies go to different groups (torchvision's
    RASampler over V ranks)."""

    def __init__(self, n, batch_size, rank, world, seed, reps=1, accum=1):
        self.n, self.batch, self.rank, self.world, self.seed, self.reps = n, batch_size, rank, world, seed, reps
        self.accum, self.steps, self.epoch, self.start = accum, n // (batch_size * world * accum), 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(runtime.mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).repeat_interleave(self.reps)
        size = self.steps * self.batch * self.world * self.accum
        items = torch.stack([order[:size], torch.arange(size) % self.reps], -1)  # (index, copy)
        mine = items.view(self.steps, self.batch, self.world * self.accum, 2)[self.start:, :, self.rank::self.world]
        return iter([(self.epoch, i, k) for i, k in mine.transpose(1, 2).reshape(-1, 2).tolist()])

    def __len__(self):
        return (self.steps - self.start) * self.batch * self.accum


def make_loader(dataset, batch_size, sampler, workers, pin_memory, size):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        collate_fn=functools.partial(collate, size=size), persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, generator=torch.Generator(),
        worker_init_fn=functools.partial(runtime.ignore_signals_not_from, os.getpid()))


def to_device_normalized(images, device, channels_last):
    """uint8 [B,3,H,W] -> float normalised on `device` (one copy of 1 byte/pixel, then the math there)."""
    return normalize(images.to(device, non_blocking=True), channels_last)


def normalize(images, channels_last):
    """uint8 [B,3,H,W] -> float, ImageNet-normalised, on the same device."""
    images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    mean, std = normalization(images.device)
    return images.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=None)
def normalization(device):  # made once per device: a new tensor each step would be a host-device copy and a sync
    return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))


class SyntheticBatches:
    """--data synthetic: one random uint8 batch on the device, `steps` times an epoch (the model's own speed)."""

    def __init__(self, batch_size, res, num_classes, steps, device):
        self.dataset, self.steps = range(batch_size * steps), steps
        self.images = torch.randint(0, 256, (batch_size, 3, res, res), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, num_classes, (batch_size,), device=device)
        self.weights = torch.ones(batch_size).pin_memory() if device.type == "cuda" else torch.ones(batch_size)

    def __iter__(self):
        return iter([(self.images, self.labels, self.weights, [])] * self.steps)


def build_loaders(args, root, rank, world, pin_memory):
    """This rank's share: (num_classes, train images, train loader, its sampler, val loader); --eval-only: val only."""
    classes, train_samples, val_samples = scan_dataset(root, train=not args.eval_only)
    val_set = ImageList(val_samples, val_transform(args.val_resize, args.val_res, args.val_interpolation))
    val_shard = range(rank, len(val_set), world)  # every world-th image: no padding, no duplicates, exact counts
    val_loader = make_loader(val_set, args.batch_size, val_shard, args.workers, pin_memory, args.val_res)
    if args.eval_only:
        return len(classes), 0, None, None, val_loader
    if len(train_samples) < args.global_batch:
        raise DataError(f"{len(train_samples)} training images in {root}/train: fewer than one global batch of "
                        f"{args.global_batch}; lower --global-batch")
    transform = RandomResizedCropFlip(args.train_res, (args.min_scale, 1.0), args.interpolation)
    train_set = ImageList(train_samples, transform, args.seed, substitute=True)
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, rank, world, args.seed, args.ra_reps, args.accum)
    train_loader = make_loader(train_set, args.batch_size, sampler, args.workers, pin_memory, args.train_res)
    return len(classes), len(train_samples), train_loader, sampler, val_loader


# ----------------------------------------------------------------------------- command line: verify, sort-val

GRAY_MODES = ("1", "L", "LA", "I", "I;16")


def check_file(path):
    """verify's worker: (path, problem or None, PIL mode, format), from the training loader's own decode at 1/8
    scale: libjpeg still reads every coefficient there, so truncated and corrupt files fail as in a full decode."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        image = open_image(raw)
        decode_at_least(raw, 1, 1)
        return path, None, image.mode, image.format
    except Unreadable as error:
        return path, str(error), None, None
    except Exception as error:  # an I/O error, or one that would stop training: name it all the same
        return path, f"{type(error).__name__}: {error}", None, None


def quiet_worker():  # PIL's EXIF warnings would break the progress line; Ctrl-C is for the main process
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def verify(root):
    """Decode every train and val file on all CPUs, with a progress line; DataError if any cannot be read."""
    classes, train, val = scan_dataset(root)
    paths, results, tty = [p for p, _ in train + val], {}, sys.stderr.isatty()  # on a terminal: one line in place
    processes, start = min(runtime.cpu_count(), len(paths)), time.monotonic()
    shown = start
    with multiprocessing.Pool(processes, initializer=quiet_worker) as pool:
        for path, *result in pool.imap_unordered(check_file, paths, chunksize=32):
            results[path], now = result, time.monotonic()
            if now - shown > (0.25 if tty else 30) or len(results) == len(paths):
                shown, rate = now, len(results) / max(now - start, 1e-6)
                eta = round((len(paths) - len(results)) / rate)
                print("\r" * tty + f"verify: {len(results)}/{len(paths)} files, {rate:.0f}/s on {processes} CPUs, "
                      f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d} ", end="" if tty else "\n",
                      file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    for name, samples in (("train", train), ("val", val)):
        rows = [(p, *results[p]) for p, _ in samples]
        print(f"{name}: {len(rows)} files in {len(classes)} classes, {sum(r[1] is not None for r in rows)} unreadable, "
              f"{sum(r[2] == 'CMYK' for r in rows)} CMYK, {sum(r[2] in GRAY_MODES for r in rows)} grayscale, "
              f"{sum(r[3] not in (None, 'JPEG') and r[0].lower().endswith(('.jpg', '.jpeg')) for r in rows)} "
              "not JPEG inside")
    bad = sorted((path, problem) for path, (problem, _, _) in results.items() if problem)
    for path, problem in bad:
        print(f"unreadable: {path}: {problem}")
    if bad:
        raise DataError(f"{len(bad)} of {len(paths)} files cannot be read (listed above): training skips them, "
                        "up to --max-unreadable; remove or replace them")


def val_labels(path):
    """{image name without extension: wnid} from Kaggle's LOC_val_solution.csv (ImageId,PredictionString, the
    string starting with the wnid) or from ILSVRC2012_devkit_t12.tar.gz, as torchvision reads it: data/meta.mat maps
    ILSVRC2012_ID -> wnid, data/ILSVRC2012_validation_ground_truth.txt has the IDs of val images 1, 2, ... in order."""
    if not os.path.isfile(path):
        raise DataError(f"--labels file not found: {path}")
    if not tarfile.is_tarfile(path):
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path} is neither Kaggle's LOC_val_solution.csv (ImageId,PredictionString) nor "
                            "ILSVRC2012_devkit_t12.tar.gz")
        return {row[0]: row[1].split()[0] for row in rows[1:] if len(row) > 1 and row[1].split()}
    try:
        from scipy.io import loadmat  # only here: not a dependency of the project
    except ImportError:
        raise DataError("the devkit's meta.mat needs scipy: pip install scipy (or use Kaggle's LOC_val_solution.csv)"
                        ) from None
    with tarfile.open(path) as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        try:
            meta, truth = (tar.extractfile(members[n]).read() for n in ("meta.mat",
                                                                        "ILSVRC2012_validation_ground_truth.txt"))
        except KeyError as error:
            raise DataError(f"no {error} in {path}: expected ILSVRC2012_devkit_t12.tar.gz") from None
    wnids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]}
    return {f"ILSVRC2012_val_{i:08d}": wnids.get(int(n)) for i, n in enumerate(truth.split(), 1)}


def sort_val(val_dir, labels_path):
    """Move the flat val images into val_dir/<wnid>/, only once every image has a label. os.replace within one file
    system: each move is atomic, and an interrupted run, run again, moves the rest."""
    if not os.path.isdir(val_dir):
        raise DataError(f"val folder not found: {val_dir}")
    entries = [e for e in os.scandir(val_dir) if not e.name.startswith(".")]
    flat = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not flat:
        folders = sum(e.is_dir() for e in entries)
        if not folders:
            raise DataError(f"no images in {val_dir}")
        print(f"{val_dir} is already sorted ({folders} class folders, no images at the top): nothing moved")
        return
    labels = val_labels(labels_path)
    wnids = {name: labels.get(os.path.splitext(name)[0]) for name in flat}
    missing = [name for name, wnid in wnids.items() if not wnid]
    if missing:
        raise DataError(f"{len(missing)} of {len(flat)} images in {val_dir} have no label in {labels_path} "
                        f"(first: {missing[0]}): nothing moved")
    for name, wnid in wnids.items():
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
        os.replace(os.path.join(val_dir, name), os.path.join(val_dir, wnid, name))
    print(f"{val_dir}: moved {len(flat)} images into {len(set(wnids.values()))} class folders")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, as train.py does
        raise DataError(f"{message} (python data.py --help)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python data.py", description="Check, verify or sort an ImageNet-layout folder.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("count", help="class and image counts (the default: python data.py DATA)").add_argument("data")
    commands.add_parser("verify", help="decode every file on all CPUs; exit 2 if any fails").add_argument("data")
    sort = commands.add_parser("sort-val", help="move ImageNet's flat val images into VAL_DIR/<wnid>/")
    sort.add_argument("val_dir")
    sort.add_argument("--labels", required=True, help="LOC_val_solution.csv or ILSVRC2012_devkit_t12.tar.gz")
    try:  # a first word that is no command is the DATA of `count`
        args = parser.parse_args(argv if argv[:1] and argv[0] in [*commands.choices, "-h", "--help"] else
                                 ["count", *argv])
        if args.command == "verify":
            verify(args.data)
        elif args.command == "sort-val":
            sort_val(args.val_dir, args.labels)
        else:
            classes, train, val = scan_dataset(args.data)
            print(f"{args.data}: {len(classes)} classes, {len(train)} train images, {len(val)} val images")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
