"""The built-in demo set: 10 classes of drawn shapes and textures, 100 train + 40 val per class, 64x64 JPEGs.

Needs torch-free Python and pillow. `python train.py` (no --data) writes it once to ~/.cache/resnet50-demo-v3 and
trains on it through the same ImageFolder + JPEG decode path as ImageNet; each file depends only on its name, so
every machine writes the same bytes.

    python demo.py DIR      # write the demo set into DIR
"""
import colorsys
import os
import random
import shutil
import sys

from PIL import Image, ImageDraw, ImageFilter

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
    """Write the demo set as JPEGs in ImageNet layout under root, once. It is written into a temporary folder and
    renamed into place, so processes that start together (torchrun, several nodes on one home folder) never read
    a half-written set: whoever renames first wins, the others drop their copy."""
    if os.path.isdir(root):
        return root
    tmp = f"{root}.tmp-{os.getpid()}"
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(DEMO_CLASSES):
            folder = os.path.join(tmp, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                rng = random.Random(f"{seed}-{split}-{index}-{i}")  # each file depends only on its own name
                draw_demo_image(index, rng, size).save(os.path.join(folder, f"{i:04d}.JPEG"), quality=90)
    try:
        os.rename(tmp, root)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python demo.py DIR")
    print("demo set in", make_demo_dataset(sys.argv[1]))
