"""Data for train.py: ImageNet-layout folders, the built-in demo set, the fast CPU path and the GPU-decode path.

Needs torch, torchvision and pillow. train.py is the user of this file; it can also be run alone:

    python data.py /imagenet            # check a dataset folder and print its class and image counts
    python data.py --make-demo DIR      # write the built-in demo set into DIR

Layout: DATA/train/<class>/*.JPEG and DATA/val/<class>/*.JPEG, the same class folders in both (ImageFolder).

Workers return uint8 CHW tensors; train.py moves whole batches to the device from pinned memory and converts,
normalises and changes layout there, where it is cheap (see `to_device_normalized`).

The fast CPU path (`FastRandomResizedCrop`, `FastResizeCenterCrop`) draws torchvision's RandomResizedCrop box
from the JPEG header alone, asks libjpeg to decode at 1/2, 1/4 or 1/8 scale when the box still has at least the
output size at that scale (PIL's `Image.draft`), and crops and resizes in one `Image.resize(box=...)` call:
the model sees the same crop distribution at the same antialiased quality, for less decoding work.
"""
import argparse
import colorsys
import functools
import io
import math
import os
import random
import signal
import sys
import threading

import torch
from PIL import Image, ImageDraw, ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image, too large).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(Exception):
    """A problem with the user's data (not a bug): train.py prints it on one line and exits with code 2."""


# ------------------------------------------------------------------------------------------ folders and checks

def find_classes(split_dir):
    if not os.path.isdir(split_dir):
        raise DataError(f"missing folder {split_dir}: expected DATA/train/<class>/*.JPEG and DATA/val/<class>/*")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files>")
    return classes


def list_images(split_dir, classes):
    """[(path, class_index)] sorted by class then file name; every class folder must hold at least one image."""
    samples = []
    for index, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"empty class folder {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(os.path.join(folder, f), index) for f in files]
    return samples


def scan_dataset(root):
    """Check DATA/train and DATA/val and return (classes, train_samples, val_samples)."""
    if not os.path.isdir(root):
        raise DataError(f"--data folder not found: {root}")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for d in (train_dir, val_dir):
        if not os.path.isdir(d):
            raise DataError(f"no {os.path.basename(d)}/ folder in {root}: expected {root}/train/<class>/ "
                            f"and {root}/val/<class>/ (see README for ImageNet's val layout)")
    classes, val_classes = find_classes(train_dir), find_classes(val_dir)
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))[:3]
        only_val = sorted(set(val_classes) - set(classes))[:3]
        raise DataError(f"train and val have different classes in {root}: only in train {only_train}, "
                        f"only in val {only_val} ({len(classes)} vs {len(val_classes)} folders)")
    return classes, list_images(train_dir, classes), list_images(val_dir, classes)


# ----------------------------------------------------------------------------------------------- fast CPU path

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
    # Fallback to a central crop, as torchvision does.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def decode_crop_resize(image, box, size):
    """Decode only as much as needed (JPEG draft mode), then crop box=(left, top, w, h) and resize to size."""
    left, top, w, h = box
    full_w, full_h = image.size
    # Ask for the smallest DCT scale whose crop is still at least `size` on both sides: no upsampling is
    # introduced that a full decode would not also need.
    want = (math.ceil(full_w * size[0] / w), math.ceil(full_h * size[1] / h))
    image.draft("RGB", want)  # no-op for non-JPEG files
    scale = 2 ** round(math.log2(full_w / image.size[0]))  # 1, 2, 4 or 8: libjpeg's DCT scaling
    image = image.convert("RGB")
    crop = (left / scale, top / scale, min((left + w) / scale, image.size[0]), min((top + h) / scale, image.size[1]))
    return image.resize(size, Image.BILINEAR, box=crop)


class FastRandomResizedCrop:
    """PIL image (not yet decoded) -> RandomResizedCrop(size) + horizontal flip, as a decoded RGB PIL image."""

    def __init__(self, size, scale=(0.08, 1.0), hflip=0.5):
        self.size, self.scale, self.hflip = (size, size), scale, hflip

    def __call__(self, image):
        box = random_resized_crop_box(*image.size, scale=self.scale)
        image = decode_crop_resize(image, box, self.size)
        if torch.rand(1).item() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image


class FastResizeCenterCrop:
    """Resize(resize) then CenterCrop(size), done as one crop-and-resize of the region they keep."""

    def __init__(self, resize, size):
        self.resize, self.size = resize, size

    def __call__(self, image):
        width, height = image.size
        side = min(width, height) * self.size / self.resize  # the kept square, in original pixels
        box = ((width - side) / 2, (height - side) / 2, side, side)
        return decode_crop_resize(image, box, (self.size, self.size))


def train_transform(size, auto_augment="ta_wide", random_erase=0.1, min_scale=0.08, crop=True):
    """Crop + flip (unless crop=False: the GPU path crops on the device), TrivialAugmentWide, uint8, erasing."""
    import torchvision.transforms as T
    steps = [FastRandomResizedCrop(size, scale=(min_scale, 1.0))] if crop else []
    if auto_augment == "ta_wide":
        steps.append(T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR))
    if crop:
        steps.append(T.PILToTensor())
    if random_erase > 0:  # RandomErasing(value=0) after Normalize, done on the uint8 image: fill with the mean
        steps.append(T.RandomErasing(p=random_erase, value=tuple(round(255 * m) for m in IMAGENET_MEAN)))
    return T.Compose(steps) if steps else None


def val_transform(resize, size):
    import torchvision.transforms as T
    return T.Compose([FastResizeCenterCrop(resize, size), T.PILToTensor()])


# -------------------------------------------------------------------------------------------- dataset, loader

class ImageList(torch.utils.data.Dataset):
    """(path, label) pairs -> (uint8 image, label). An unreadable file yields (None, path) for the collate."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                # Image.open reads only the header; the transform decodes (at reduced scale where it can).
                return self.transform(Image.open(f)), label
        except UNREADABLE as error:
            return None, f"{path} ({type(error).__name__}: {error})"


def collate_skipping_bad(batch):
    """Stack good samples; return (images uint8 [B,3,H,W], labels int64 [B], [descriptions of bad files])."""
    good = [(x, y) for x, y in batch if x is not None]
    bad = [y for x, y in batch if x is None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (its shuffle depends only on seed and epoch) that can start part-way into an epoch."""

    def __init__(self, dataset, num_replicas, rank, seed, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0  # samples of this rank's share already trained in this epoch

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


def make_loader(dataset, batch_size, sampler, workers, pin_memory, drop_last, collate_fn=collate_skipping_bad):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, collate_fn=collate_fn, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, generator=torch.Generator(),
        worker_init_fn=functools.partial(ignore_signals_not_from, os.getpid()))


def ignore_signals_not_from(main_pid, worker_id):
    """A loader worker's signal handling: SIGTERM from the main process (the loader shutting it down) ends it, as
    in torch's own worker; SIGTERM and SIGINT from anyone else are ignored. SLURM's step signals, torchrun (which
    signals each rank's whole process group) and Ctrl-C reach the workers too. torch's worker would die of them,
    and the main process would get torch's 'worker killed' error at whatever line it is on; this way the workers
    keep serving batches while the main process finishes its step, votes and saves (train.py's StopRequested)."""
    if not hasattr(signal, "sigwaitinfo"):  # macOS and Windows lack it: torch's default handling stays
        return
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # delivered to the waiting thread below, not to a handler

    def wait_for_signals():
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_signo == signal.SIGTERM and info.si_pid == main_pid:
                os._exit(0)

    threading.Thread(target=wait_for_signals, daemon=True).start()


def to_device_normalized(images, device, channels_last):
    """uint8 [B,3,H,W] -> float normalised on `device` (one copy of 1 byte/pixel, then the math there)."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    mean, std = normalization_constants(torch.device(device))
    return images.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=None)
def normalization_constants(device):
    """ImageNet mean and std in 0-255 units on `device`, made once, not copied to the GPU every step."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    return mean, torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255


# ------------------------------------------------------------------------------------------ train.py's loaders

def synthetic_batches(args, device, num_classes, steps):
    images = torch.randint(0, 256, (args.batch_size, 3, args.train_res, args.train_res), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (args.batch_size,), device=device)
    return [(images, labels, [])] * steps


def build_loaders(args, rank, world, device):
    """train.py's data from its flags: (num_classes, train loader, train sampler, val loader or None)."""
    if args.data == "synthetic":
        return 1000, synthetic_batches(args, device, 1000, 100), None, None
    root = args.data if args.data is not None else make_demo_dataset(args.demo_dir) if rank == 0 else None
    if args.data is None and world > 1:
        torch.distributed.barrier()
        root = args.demo_dir
    classes, train_samples, val_samples = scan_dataset(root)
    pin = device.type == "cuda"
    if args.decode == "gpu":
        train_set = EncodedRandomResizedCrop(train_samples, args.train_res, (args.min_scale, 1.0))
    else:
        train_set = ImageList(train_samples, train_transform(args.train_res, args.auto_augment, args.random_erase, args.min_scale))
    val_set = ImageList(val_samples, val_transform(args.val_resize, args.val_res))
    if len(train_set) < args.batch_size * world:
        raise DataError(f"{len(train_set)} training images in {root}/train: fewer than one global batch "
                             f"({args.batch_size} x {world}); lower --batch-size")
    sampler = ResumableDistributedSampler(train_set, world, rank, args.seed)
    collate = collate_encoded if args.decode == "gpu" else collate_skipping_bad
    train_loader = make_loader(train_set, args.batch_size, sampler, args.workers, pin, True, collate)
    val_shard = range(rank, len(val_set), world)  # every world-th image: no padding, no duplicates, exact counts
    val_loader = make_loader(val_set, args.batch_size, val_shard, args.workers, pin, False)
    return len(classes), train_loader, sampler, val_loader



# ------------------------------------------------------------------------------------------- GPU decode path

class EncodedRandomResizedCrop(ImageList):
    """For --decode gpu: workers only read the file and draw the crop and flip from the JPEG header.

    Returns (bytes uint8 [N], box int64 [4] = left, top, w, h, flip bool, label), or, for a file nvJPEG can't take
    (not a JPEG, or CMYK), the crop already decoded on the CPU by the fast path: (image uint8 [3,S,S], None, ...).
    """

    def __init__(self, samples, size, scale=(0.08, 1.0)):
        super().__init__(samples, transform=None)
        self.size, self.scale = size, scale

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                raw = f.read()
            image = Image.open(io.BytesIO(raw))
            box = random_resized_crop_box(*image.size, scale=self.scale)
            flip = torch.rand(1).item() < 0.5
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                crop = decode_crop_resize(image, box, (self.size, self.size))
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop
                return pil_to_uint8(crop), None, flip, label
            return torch.frombuffer(bytearray(raw), dtype=torch.uint8), torch.tensor(box), flip, label
        except UNREADABLE as error:
            return None, None, False, f"{path} ({type(error).__name__}: {error})"


def pil_to_uint8(image):
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.size[1], image.size[0], 3).permute(2, 0, 1)


def collate_encoded(batch):
    good = [b for b in batch if b[0] is not None]
    bad = [b[3] for b in batch if b[0] is None]
    return [b[:3] for b in good], torch.tensor([b[3] for b in good], dtype=torch.int64), bad


def decode_jpegs(items, device):
    """The batch's JPEG bytes (the items with a crop box) decoded in one torchvision.io.decode_jpeg call, in order."""
    from torchvision.io import ImageReadMode, decode_jpeg
    encoded = [data for data, box, _ in items if box is not None]
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device) if encoded else []


def decode_batch_on_device(items, size, device, augment=None):
    """nvJPEG-decode a batch on `device` in one call, then crop, resize (antialiased bilinear) and flip each image.

    `items` come from EncodedRandomResizedCrop via collate_encoded; returns uint8 [B, 3, size, size] on device.
    Works on the CPU too (that is how the tests check it): torchvision's decode_jpeg takes device='cpu' as well.
    """
    decoded = iter(decode_jpegs(items, device))
    out = torch.empty(len(items), 3, size, size, dtype=torch.uint8, device=device)
    for i, (data, box, flip) in enumerate(items):
        if box is None:  # already decoded, cropped and flipped on the CPU
            out[i] = data.to(device, non_blocking=True)
            continue
        left, top, w, h = box.tolist()
        crop = next(decoded)[None, :, top:top + h, left:left + w].float()
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        crop = crop.round_().clamp_(0, 255)
        out[i] = (crop.flip(-1) if flip else crop)[0].to(torch.uint8)
        if augment is not None:  # TrivialAugmentWide / RandomErasing on the device, one image at a time
            out[i] = augment(out[i])
    return out


# ------------------------------------------------------------------------------------------- built-in demo set

DEMO_CLASSES = ("disc", "square", "triangle", "ring", "cross", "hstripes", "vstripes", "checker", "dots", "diagonal")


def draw_demo_image(class_index, rng, size=64):
    """One procedurally drawn image of class `class_index` with random colours, position, scale and noise."""
    def colour(low, high):
        return tuple(rng.randint(low, high) for _ in range(3))

    image = Image.new("RGB", (size, size), colour(0, 90))
    draw = ImageDraw.Draw(image)
    # Each class has its own shape and its own hue band (with jitter), so a from-scratch ResNet-50 learns it in
    # a few hundred CPU steps; brightness, saturation, position, size and blur vary freely.
    hue = (class_index / len(DEMO_CLASSES) + rng.uniform(-0.03, 0.03)) % 1.0
    fg = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)))
    r = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    name = DEMO_CLASSES[class_index]
    period = rng.randint(6, 12)
    if name == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif name == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif name == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(3, int(r / 3)))
    elif name == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
    elif name == "hstripes":
        for y in range(0, size, period):
            draw.rectangle((0, y, size, y + period // 2 - 1), fill=fg)
    elif name == "vstripes":
        for x in range(0, size, period):
            draw.rectangle((x, 0, x + period // 2 - 1, size), fill=fg)
    elif name == "checker":
        for y in range(0, size, period):
            for x in range(0, size, period):
                if (x // period + y // period) % 2 == 0:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=fg)
    elif name == "dots":
        for _ in range(rng.randint(8, 16)):
            x, y, d = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 4)
            draw.ellipse((x - d, y - d, x + d, y + d), fill=fg)
    elif name == "diagonal":
        for k in range(-size, size, period):
            draw.line((k, 0, k + size, size), fill=fg, width=max(2, period // 2))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_demo_dataset(root, train_per_class=100, val_per_class=40, size=64, seed=0):
    """Write the demo set as JPEGs in ImageNet layout under root (once: an existing complete set is reused)."""
    done = os.path.join(root, "COMPLETE")
    if os.path.exists(done):
        return root
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(DEMO_CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                rng = random.Random(f"{seed}-{split}-{index}-{i}")  # each file depends only on its own name
                draw_demo_image(index, rng, size).save(os.path.join(folder, f"{i:04d}.JPEG"), quality=90)
    with open(done, "w") as f:
        f.write("demo set written completely\n")
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", help="a dataset folder to check (DATA/train, DATA/val)")
    parser.add_argument("--make-demo", metavar="DIR", help="write the built-in demo set into DIR")
    args = parser.parse_args()
    try:
        if args.make_demo:
            print("demo set in", make_demo_dataset(args.make_demo))
        if args.data:
            classes, train, val = scan_dataset(args.data)
            print(f"{args.data}: {len(classes)} classes, {len(train)} train images, {len(val)} val images")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
