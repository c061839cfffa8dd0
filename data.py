"""Data for train.py: ImageNet-layout folders, per-sample seeded transforms, the sampler, loaders and bad files.

Needs torch, torchvision, pillow and runtime.py. train.py is its user; alone it checks a dataset folder:

    python data.py /imagenet            # class and image counts of DATA/train/<class>/* and DATA/val/<class>/*

What each training image looks like depends only on (seed, epoch, sample index): the sampler hands out
(epoch, index) items, each transformed under its own seed, so neither the number of loader workers, nor their
lifetime, nor the number of processes changes the data, and a resumed run sees what it would have seen.
Training crops draw torchvision's RandomResizedCrop box from the JPEG header alone and decode at 1/2, 1/4 or 1/8
scale when the box still has the output size there (PIL's `Image.draft`). Validation is torchvision's own
`Resize + CenterCrop` on the full decode, pixel for pixel, so top-1 compares with published figures. A file PIL
cannot decode is skipped and reported; an I/O error or a transform error stops the run.
"""
import functools
import io
import math
import os
import sys
import traceback

import torch
from PIL import Image

import runtime

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
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files>")
    return classes


def list_images(split_dir, classes):
    """[(path, class_index)] sorted by class then file name; every class folder must hold at least one image."""
    samples = []
    for index, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        files = sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
        if not files:
            raise DataError(f"empty class folder {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(os.path.join(folder, f), index) for f in files]
    return samples


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

def decode(image, draft_size=None):
    """Decode a PIL image to RGB (at a reduced JPEG scale that still covers draft_size); corrupt data -> Unreadable."""
    try:
        if draft_size is not None:
            image.draft("RGB", draft_size)  # no-op for non-JPEG files
        return image.convert("RGB")
    except DECODE_ERRORS as error:
        raise Unreadable(f"{type(error).__name__}: {error}") from None


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


def decode_crop_resize(image, box, size, resample=Image.BILINEAR):
    """Decode only as much as needed (JPEG draft mode), then crop box=(left, top, w, h) and resize to size."""
    left, top, w, h = box
    full_w, full_h = image.size
    # The smallest DCT scale whose crop still covers `size`: no upsampling that a full decode would not also need.
    image = decode(image, (math.ceil(full_w * size[0] / w), math.ceil(full_h * size[1] / h)))
    scale = 2 ** round(math.log2(full_w / image.size[0]))  # 1, 2, 4 or 8: libjpeg's DCT scaling
    crop = (left / scale, top / scale, min((left + w) / scale, image.size[0]), min((top + h) / scale, image.size[1]))
    return image.resize(size, resample, box=crop)


class FastRandomResizedCrop:
    """PIL image (not yet decoded) -> RandomResizedCrop(size) + horizontal flip, as a decoded RGB PIL image."""

    def __init__(self, size, scale=(0.08, 1.0), hflip=0.5, resample=Image.BILINEAR):
        self.size, self.scale, self.hflip, self.resample = (size, size), scale, hflip, resample

    def __call__(self, image):
        box = random_resized_crop_box(*image.size, scale=self.scale)
        image = decode_crop_resize(image, box, self.size, self.resample)
        return image.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1).item() < self.hflip else image


def train_transform(size, auto_augment="ta_wide", random_erase=0.1, min_scale=0.08, interpolation="bilinear",
                    ra_magnitude=9):
    """Crop + flip, TrivialAugmentWide or RandAugment (2 ops), uint8 tensor, random erasing, all on uint8."""
    import torchvision.transforms as T
    mode = T.InterpolationMode(interpolation)
    steps = [FastRandomResizedCrop(size, (min_scale, 1.0), resample=getattr(Image, interpolation.upper()))]
    if auto_augment != "none":
        steps.append(T.TrivialAugmentWide(interpolation=mode) if auto_augment == "ta_wide" else  # 11 bins: timm's m/10
                     T.RandAugment(2, ra_magnitude, 11, mode, fill=[round(255 * m) for m in IMAGENET_MEAN]))
    steps.append(T.PILToTensor())
    if random_erase > 0:  # RandomErasing(value=0) after Normalize, done on the uint8 image: fill with the mean
        steps.append(T.RandomErasing(p=random_erase, value=tuple(round(255 * m) for m in IMAGENET_MEAN)))
    return T.Compose(steps)


def val_transform(resize, size):
    """torchvision's eval preset, exactly: Resize(resize) (PIL, bilinear, antialiased), CenterCrop(size)."""
    import torchvision.transforms as T
    return T.Compose([decode, T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size),
                      T.PILToTensor()])


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
                try:
                    image = Image.open(io.BytesIO(raw))  # reads the header; the transform decodes
                except DECODE_ERRORS as error:
                    raise Unreadable(f"{type(error).__name__}: {error}") from None
                return self.transform(image), label, None
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
    """This rank's (epoch, index, copy) items: a permutation per (seed, epoch), each image `reps` times in a row
    (repeated augmentation, Hoffer et al. 2020), in whole global batches; rank r takes every world-th item, so step k
    holds the same images however split, and copies go to different ranks (torchvision's RASampler)."""

    def __init__(self, n, batch_size, rank, world, seed, reps=1):
        self.n, self.batch, self.rank, self.world, self.seed, self.reps = n, batch_size, rank, world, seed, reps
        self.steps, self.epoch, self.start = n // (batch_size * world), 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(runtime.mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).repeat_interleave(self.reps)[:self.steps * self.batch * self.world]
        first = self.start * self.batch * self.world + self.rank
        copies = torch.arange(len(order)) % self.reps
        return iter([(self.epoch, i, k) for i, k in zip(order[first::self.world].tolist(),
                                                          copies[first::self.world].tolist())])

    def __len__(self):
        return (self.steps - self.start) * self.batch


def make_loader(dataset, batch_size, sampler, workers, pin_memory, size):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        collate_fn=functools.partial(collate, size=size), persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, generator=torch.Generator(),
        worker_init_fn=functools.partial(runtime.ignore_signals_not_from, os.getpid()))


def to_device_normalized(images, device, channels_last):
    """uint8 [B,3,H,W] -> float normalised on `device` (one copy of 1 byte/pixel, then the math there)."""
    images = images.to(device, non_blocking=True)
    images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    mean, std = normalization(device)
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
    val_set = ImageList(val_samples, val_transform(args.val_resize, args.val_res))
    val_shard = range(rank, len(val_set), world)  # every world-th image: no padding, no duplicates, exact counts
    val_loader = make_loader(val_set, args.batch_size, val_shard, args.workers, pin_memory, args.val_res)
    if args.eval_only:
        return len(classes), 0, None, None, val_loader
    if len(train_samples) < args.batch_size * world:
        raise DataError(f"{len(train_samples)} training images in {root}/train: fewer than one global batch "
                        f"({args.batch_size} x {world}); lower --batch-size")
    transform = train_transform(args.train_res, args.auto_augment, args.random_erase, args.min_scale,
                                args.interpolation, args.ra_magnitude)
    train_set = ImageList(train_samples, transform, args.seed, substitute=True)
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, rank, world, args.seed, args.ra_reps)
    train_loader = make_loader(train_set, args.batch_size, sampler, args.workers, pin_memory, args.train_res)
    return len(classes), len(train_samples), train_loader, sampler, val_loader


def main():
    try:
        classes, train, val = scan_dataset(sys.argv[1] if sys.argv[1:] else sys.exit("usage: python data.py DATA"))
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"{sys.argv[1]}: {len(classes)} classes, {len(train)} train images, {len(val)} val images")


if __name__ == "__main__":
    main()
