"""Mixup, CutMix, label smoothing and the soft-target loss, as plain functions on a batch.

Needs only torch; copy it alone into another project. Works on tensors of any device: the random draws (lambda,
the CutMix box) are host scalars, so nothing is synchronised with the GPU. A batch is `images` [B, 3, H, W]
(float, already normalised) and `labels` [B] int64.

    from augment import MixupCutmix, soft_cross_entropy
    mix = MixupCutmix(num_classes=1000)              # torchvision's V2 recipe: mixup 0.2, cutmix 1.0, smoothing 0.1
    images, targets = mix(images, labels)            # targets: soft [B, 1000], rows sum to 1
    loss = soft_cross_entropy(model(images), targets)

Semantics, and how they compare with the two libraries people know:
- Partner: sample i is mixed with sample i-1 (`roll(1, 0)`), as torchvision's `transforms.v2.MixUp/CutMix`;
  timm's `Mixup` (mode='batch') uses the reversed batch (`flip(0)`). Either is a fixed pairing, which is fine
  because the sampler already shuffles the batch; no extra randomness is drawn. `shift` moves the partner further
  (i - shift), so that with repeated augmentation it is never a copy of the same image (train.py picks it).
- One lambda ~ Beta(alpha, alpha) per batch, as both libraries do in their default (batch) mode.
- CutMix: the box has area fraction 1-lambda, a uniformly drawn centre, and is clipped at the borders; the
  target weight is then set to the exact fraction of pixels kept, as torchvision always does and timm does with
  `correct_lam=True` (its default).
- Label smoothing is applied to each one-hot target before mixing, as in timm's `mixup_target`. torchvision's
  reference train.py instead passes `label_smoothing` to `nn.CrossEntropyLoss` on the mixed targets, which gives
  the same soft targets: smoothing and mixing are both linear and the smoothing term is uniform.
- MixupCutmix picks CutMix with probability `switch_prob` when both are on (timm's `switch_prob`;
  torchvision's reference uses `RandomChoice([MixUp, CutMix])`, i.e. 0.5). Unlike timm it has no `prob` to skip
  mixing for some batches.

`binary_cross_entropy(logits, targets, target_threshold=None)` is the loss of the "ResNet strikes back" recipes
(https://arxiv.org/abs/2110.00476), timm's `BinaryCrossEntropy` on mixed targets: one sigmoid per class, the mean
over all B*C terms, targets optionally binarised to (targets > target_threshold) first.
"""
import functools
import math

import torch
import torch.nn.functional as F


def one_hot(labels, num_classes, smoothing=0.0):
    """Soft targets [B, C] (float32): 1 - smoothing + smoothing/C on the label, smoothing/C elsewhere.

    This is exactly the target `F.cross_entropy(..., label_smoothing=smoothing)` uses.
    """
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def sample_beta(alpha, generator=None):
    """lambda ~ Beta(alpha, alpha) as a Python float; reproducible when a CPU `generator` is given."""
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if generator is None:
        return float(beta.sample())
    # torch.distributions has no generator argument: seed the CPU generator from ours, inside fork_rng so the
    # global random state is left exactly as it was.
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return float(beta.sample())


def mixup(images, targets, alpha, generator=None, shift=1):
    """Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): x = lam*x + (1-lam)*x_partner.

    `targets` are soft [B, C]; the partner of sample i is sample i - shift. Returns new (images, targets).
    alpha <= 0 returns the inputs unchanged.
    """
    if alpha <= 0:
        return images, targets
    lam = sample_beta(alpha, generator)
    images = images.mul(lam).add_(images.roll(shift, 0), alpha=1.0 - lam)
    targets = targets.mul(lam).add_(targets.roll(shift, 0), alpha=1.0 - lam)
    return images, targets


def cutmix_box(height, width, lam, generator=None):
    """A box (top, bottom, left, right) of area fraction about 1-lam, centre uniform, clipped at the borders."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (), generator=generator))
    cx = int(torch.randint(0, width, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(images, targets, alpha, generator=None, shift=1):
    """CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899): paste a box of the partner image.

    The target weight is the exact fraction of pixels kept after clipping. alpha <= 0 is the identity.
    """
    if alpha <= 0:
        return images, targets
    lam = sample_beta(alpha, generator)
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, generator)
    images = images.clone()
    images[..., top:bottom, left:right] = images.roll(shift, 0)[..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    targets = targets.mul(lam).add_(targets.roll(shift, 0), alpha=1.0 - lam)
    return images, targets


class MixupCutmix:
    """(images, labels) -> (images, soft targets): smoothing, then mixup or cutmix (one per batch).

    An alpha of 0 turns that one off; both 0 leaves label smoothing alone. With both on, CutMix is chosen with
    probability `switch_prob`. Defaults are torchvision's V2 ResNet-50 recipe.
    """

    def __init__(self, num_classes, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1,
                 generator=None, shift=1):
        self.num_classes, self.smoothing, self.shift = num_classes, smoothing, shift
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob
        self.generator = generator

    def __call__(self, images, labels):
        targets = one_hot(labels, self.num_classes, self.smoothing)
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if use_mixup and use_cutmix:
            use_cutmix = float(torch.rand((), generator=self.generator)) < self.switch_prob
            use_mixup = not use_cutmix
        if use_cutmix:
            return cutmix(images, targets, self.cutmix_alpha, self.generator, self.shift)
        if use_mixup:
            return mixup(images, targets, self.mixup_alpha, self.generator, self.shift)
        return images, targets


def soft_cross_entropy(logits, targets, weights=None):
    """Cross-entropy against soft targets [B, C]: the mean over the batch, or with per-sample `weights` [B] the
    weighted sum divided by B (a weight of 0 drops a sample without changing the scale of the others' gradients).

    For smoothed one-hot targets it equals `F.cross_entropy(logits, labels, label_smoothing=eps)`. Computed in
    float32 whatever the autocast dtype, for a stable log-softmax.
    """
    losses = F.cross_entropy(logits.float(), targets.float(), reduction="none")
    return losses.mean() if weights is None else (losses * weights).mean()


def binary_cross_entropy(logits, targets, target_threshold=None, weights=None):
    """Binary cross-entropy of each class's logit against soft targets [B, C] (already smoothed/mixed), as timm's
    `BinaryCrossEntropy` (timm/loss/binary_cross_entropy.py) given such targets: the mean over all B*C terms.

    `target_threshold` first turns the targets into 1.0 where above it, 0.0 elsewhere (timm's `--bce-target-thresh`).
    Per-sample `weights` [B] weigh each sample's mean over classes, as in soft_cross_entropy (timm's `weight` is per
    class; not offered). Computed in float32 whatever the autocast dtype.
    """
    targets = targets.float()
    if target_threshold is not None:
        targets = targets.gt(target_threshold).float()
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(1)  # C terms each
    return losses.mean() if weights is None else (losses * weights).mean()


# --------------------------------------------------------------- image augmentation on the device, batched
# After the uint8 copy to the device: `images` uint8 [B, 3, H, W] on any device, each image with its own random
# parameters, drawn on the host from a CPU `generator` (so the same seed gives the same images on CPU and GPU, and
# nothing is synchronised with the device). Each op is written after the PIL function that timm and torchvision call,
# on the same integer arithmetic; geometric ops use torch's grid_sample (bicubic a=-0.75 where PIL uses a=-0.5).

MEAN_FILL = (124, 116, 104)  # round(255 * ImageNet mean): timm's img_mean, the fill of A3's RandAugment


def _lut(images, lut):
    """Per-image, per-channel table lookup (PIL's Image.point): lut [N, 3, 256] of values 0-255."""
    n, c, h, w = images.shape
    return lut.clamp(0, 255).to(torch.uint8).gather(2, images.reshape(n, c, h * w).long()).view(n, c, h, w)


def _levels(images):
    return torch.arange(256, device=images.device).expand(images.shape[0], 3, 256)


def _gray(images):
    """PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2**15) >> 16, as int32 [N, 1, H, W]."""
    r, g, b = images.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def _blend(degenerate, images, factor):
    """PIL's Image.blend(degenerate, image, factor), ImageEnhance's core: float32, clipped, truncated."""
    a = degenerate.float()
    out = a + factor.float().view(-1, 1, 1, 1) * (images.float() - a)
    return out.clamp_(0, 255).to(torch.uint8)


def auto_contrast(images, _=None):
    """ImageOps.autocontrast: stretch each channel's [min, max] to [0, 255]; a flat channel is left alone."""
    lo, hi = images.amin((2, 3)).double(), images.amax((2, 3)).double()
    scale = torch.full_like(lo, 255.0).div_((hi - lo).clamp(min=1))  # 255 / x in torch is 255 * (1 / x): not PIL
    lut = (_levels(images) * scale[..., None] - (lo * scale)[..., None]).floor()
    return _lut(images, torch.where((hi > lo)[..., None], lut, _levels(images).double()).long())


def equalize(images, _=None):
    """ImageOps.equalize: each channel's histogram flattened, in PIL's integer steps."""
    n, c = images.shape[:2]
    bins = (images.reshape(n * c, -1).long() + 256 * torch.arange(n * c, device=images.device)[:, None]).reshape(-1)
    hist = torch.zeros(n * c * 256, dtype=torch.long, device=images.device)
    hist = hist.index_add_(0, bins, torch.ones_like(bins)).view(n, c, 256)
    last = torch.where(hist > 0, _levels(images), -1).amax(2, keepdim=True)  # the highest value present
    step = (hist.sum(2, keepdim=True) - hist.gather(2, last)) // 255
    below = hist.cumsum(2) - hist  # pixels below each level
    lut = (step // 2 + below) // step.clamp(min=1)
    return _lut(images, torch.where(step > 0, lut, _levels(images)))


def invert(images, _=None):
    return 255 - images


def posterize(images, bits):
    """ImageOps.posterize: keep the top `bits` [N] bits."""
    mask = (255 - (2 ** (8 - bits.long()) - 1)).to(torch.uint8)  # bits 8 keeps all
    return images & mask.view(-1, 1, 1, 1)


def solarize(images, threshold):
    """ImageOps.solarize: values at or above `threshold` [N] are inverted."""
    return torch.where(images < threshold.view(-1, 1, 1, 1), images, 255 - images)


def solarize_add(images, add):
    """timm's solarize_add: `add` [N] to values below 128, clipped at 255."""
    added = (images.int() + add.int().view(-1, 1, 1, 1)).clamp_(max=255).to(torch.uint8)
    return torch.where(images < 128, added, images)


def color(images, factor):  # ImageEnhance.Color: blend with the grayscale image
    return _blend(_gray(images).expand_as(images), images, factor)


def contrast(images, factor):  # ImageEnhance.Contrast: blend with the grayscale mean, rounded
    mean = (_gray(images).double().mean((1, 2, 3)) + 0.5).floor()
    return _blend(mean.view(-1, 1, 1, 1).expand_as(images), images, factor)


def brightness(images, factor):  # ImageEnhance.Brightness: blend with black
    return _blend(torch.zeros_like(images), images, factor)


def sharpness(images, factor):
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13; the border is kept)."""
    kernel = torch.ones(3, 1, 3, 3, device=images.device)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(images.float(), kernel / 13, groups=3).add_(0.5).clamp_(0, 255).floor()
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.to(torch.uint8)
    return _blend(degenerate, images, factor)


def affine(images, matrix, fill=(0, 0, 0), interpolation="bilinear"):
    """PIL's Image.transform(AFFINE): output pixel centre (x, y) samples the input at (a x + b y + c, d x + e y + f),
    matrix [N, 6] = (a, b, c, d, e, f) per image; samples outside the image take `fill`, as PIL's."""
    n, _, h, w = images.shape
    m = matrix.to(images.device, torch.float32).view(n, 6, 1, 1)
    y, x = torch.meshgrid(torch.arange(h, device=images.device) + 0.5, torch.arange(w, device=images.device) + 0.5,
                          indexing="ij")
    sx, sy = m[:, 0] * x + m[:, 1] * y + m[:, 2], m[:, 3] * x + m[:, 4] * y + m[:, 5]
    inside = ((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)).unsqueeze(1)
    grid = torch.stack([sx * (2 / w) - 1, sy * (2 / h) - 1], -1)
    out = F.grid_sample(images.float(), grid, interpolation, padding_mode="border", align_corners=False)
    fill = torch.tensor(fill, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return torch.where(inside, out.round_().clamp_(0, 255), fill).to(torch.uint8)


def rotation_matrix(degrees, width, height):
    """PIL's Image.rotate (counter-clockwise about the centre) as an affine matrix [N, 6], from degrees [N]."""
    angle = -torch.deg2rad(degrees.double())
    cos, sin = angle.cos(), angle.sin()
    cx, cy = width / 2, height / 2
    return torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1)


def _shift(amount, axis):  # (1, 0, tx, 0, 1, ty)
    zero, one = torch.zeros_like(amount), torch.ones_like(amount)
    return torch.stack([one, zero, amount if axis == 0 else zero, zero, one, amount if axis == 1 else zero], 1)


def _shear(factor, axis):  # (1, f, 0, 0, 1, 0) or (1, 0, 0, f, 1, 0)
    zero, one = torch.zeros_like(factor), torch.ones_like(factor)
    return torch.stack([one, factor if axis == 0 else zero, zero, factor if axis == 1 else zero, one, zero], 1)


def _apply(images, ops, table):
    """Image i gets table[ops[i]] (a function of (sub-batch, its parameters)), or nothing where ops[i] < 0.
    `table` is [(fn, params [N] or [N, 6] on the host)]. Ops run on sub-batches; indices travel without a sync."""
    out = images.clone()
    for k, (fn, params) in enumerate(table):
        chosen = (ops == k).nonzero().view(-1)  # a host tensor: no device sync
        if fn is not None and len(chosen):
            index = chosen.to(images.device, non_blocking=True)
            params = params[chosen].to(images.device, non_blocking=True)
            out.index_copy_(0, index, fn(images.index_select(0, index), params))
    return out


class RandAugment:
    """timm's RandAugment `rand-m{magnitude}-mstd{magnitude_std}-inc1` (timm/data/auto_augment.py), batched:
    `num_ops` ops per image, each drawn uniformly (with replacement) from the 15 below and applied with probability
    `prob`, at a magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10], with timm's "increasing" levels; signed
    ops flip sign with probability 0.5. Geometric ops fill with `fill` (timm: the ImageNet mean) and resample with
    `interpolation` (timm: the training crop's). `ra(images, generator)`: uint8 [B, 3, H, W] -> uint8, same shape."""

    OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
           "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")

    def __init__(self, num_ops=2, magnitude=6, magnitude_std=0.5, prob=0.5, fill=MEAN_FILL, interpolation="bicubic"):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.fill, self.interpolation = fill, interpolation

    def table(self, m, sign, width, height):
        """Each op's (function, per-image parameter) at magnitudes m [N] in [0, 10] and signs [N] of +-1."""
        geometric = functools.partial(affine, fill=self.fill, interpolation=self.interpolation)
        enhance = (1 + sign * m / 10 * 0.9).clamp(min=0.1)
        fns = {"auto_contrast": (auto_contrast, m), "equalize": (equalize, m), "invert": (invert, m),
               "rotate": (geometric, rotation_matrix(sign * m / 10 * 30, width, height)),
               "posterize": (posterize, 4 - (m / 10 * 4).floor()),
               "solarize": (solarize, 256 - (m / 10 * 256).floor().clamp(max=256)),
               "solarize_add": (solarize_add, (m / 10 * 110).floor().clamp(max=128)),
               "color": (color, enhance), "contrast": (contrast, enhance), "brightness": (brightness, enhance),
               "sharpness": (sharpness, enhance),
               "shear_x": (geometric, _shear(sign * m / 10 * 0.3, 0)),
               "shear_y": (geometric, _shear(sign * m / 10 * 0.3, 1)),
               "translate_x": (geometric, _shift(sign * m / 10 * 0.45 * width, 0)),
               "translate_y": (geometric, _shift(sign * m / 10 * 0.45 * height, 1))}
        return [fns[name] for name in self.OPS]

    def __call__(self, images, generator=None):
        n, height, width = images.shape[0], images.shape[2], images.shape[3]
        for _ in range(self.num_ops):
            ops = torch.randint(len(self.OPS), (n,), generator=generator)
            ops[torch.rand(n, generator=generator) >= self.prob] = -1  # timm: skipped when random() > prob
            m = (self.magnitude + self.magnitude_std * torch.randn(n, generator=generator, dtype=torch.float64))
            sign = torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0).double()
            images = _apply(images, ops, self.table(m.clamp(0, 10), sign, width, height))
        return images


class TrivialAugmentWide:
    """torchvision's TrivialAugmentWide (transforms/autoaugment.py), batched: one of its 14 ops per image at one of
    31 magnitudes, signed ops negated with probability 0.5; fill black, as its default."""

    OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
           "contrast", "sharpness", "posterize", "solarize", "auto_contrast", "equalize")

    def __init__(self, num_bins=31, fill=(0, 0, 0), interpolation="bilinear"):
        self.num_bins, self.fill, self.interpolation = num_bins, fill, interpolation

    def __call__(self, images, generator=None):
        n, height, width = images.shape[0], images.shape[2], images.shape[3]
        ops = torch.randint(len(self.OPS), (n,), generator=generator)
        level = torch.randint(self.num_bins, (n,), generator=generator)
        sign = torch.where(torch.randint(2, (n,), generator=generator) == 1, -1.0, 1.0).double()

        def magnitude(start, end):  # torchvision's float32 linspace of bins, signed
            return torch.linspace(start, end, self.num_bins)[level].double() * sign

        geometric = functools.partial(affine, fill=self.fill, interpolation=self.interpolation)
        factor = 1 + magnitude(0.0, 0.99)
        bits = 8 - (torch.arange(self.num_bins) / ((self.num_bins - 1) / 6)).round()[level]
        fns = {"identity": (None, sign), "shear_x": (geometric, _shear(magnitude(0.0, 0.99), 0)),
               "shear_y": (geometric, _shear(magnitude(0.0, 0.99), 1)),
               "translate_x": (geometric, _shift(-magnitude(0.0, 32.0).trunc(), 0)),  # int(magnitude) pixels
               "translate_y": (geometric, _shift(-magnitude(0.0, 32.0).trunc(), 1)),
               "rotate": (geometric, rotation_matrix(magnitude(0.0, 135.0), width, height)),
               "brightness": (brightness, factor), "color": (color, factor), "contrast": (contrast, factor),
               "sharpness": (sharpness, factor), "posterize": (posterize, bits),
               "solarize": (solarize, torch.linspace(255.0, 0.0, self.num_bins)[level]),
               "auto_contrast": (auto_contrast, sign), "equalize": (equalize, sign)}
        return _apply(images, ops, [fns[name] for name in self.OPS])


class RandomErasing:
    """torchvision's RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=fill), batched: with probability
    p an image gets one box of random area and aspect (10 tries, else none) filled with `fill`."""

    def __init__(self, p=0.1, scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=MEAN_FILL):
        self.p, self.scale, self.ratio, self.fill = p, scale, ratio, fill

    def __call__(self, images, generator=None):
        n, _, height, width = images.shape
        area = height * width * torch.empty(n, 10, dtype=torch.float64).uniform_(*self.scale, generator=generator)
        aspect = torch.empty(n, 10, dtype=torch.float64).uniform_(*map(math.log, self.ratio), generator=generator).exp()
        h, w = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
        fits = (h < height) & (w < width)
        first = torch.where(fits, torch.arange(10), 10).amin(1).clamp(max=9).view(n, 1)
        h, w = h.gather(1, first).view(n), w.gather(1, first).view(n)
        erase = (torch.rand(n, generator=generator) < self.p) & fits.any(1)
        top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
        box = torch.stack([top, top + h, left, left + w, erase.long()], 1).to(images.device, non_blocking=True)
        rows = torch.arange(height, device=images.device).view(1, -1, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, -1)
        inside = ((rows >= box[:, 0, None, None]) & (rows < box[:, 1, None, None]) & (cols >= box[:, 2, None, None])
                  & (cols < box[:, 3, None, None]) & (box[:, 4, None, None] > 0)).unsqueeze(1)
        fill = torch.tensor(self.fill, dtype=torch.uint8, device=images.device).view(1, 3, 1, 1)
        return torch.where(inside, fill, images)
