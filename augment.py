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
  because the sampler already shuffles the batch; no extra randomness is drawn.
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


def mixup(images, targets, alpha, generator=None):
    """Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): x = lam*x + (1-lam)*x_partner.

    `targets` are soft [B, C]; returns new (images, targets). alpha <= 0 returns the inputs unchanged.
    """
    if alpha <= 0:
        return images, targets
    lam = sample_beta(alpha, generator)
    images = images.mul(lam).add_(images.roll(1, 0), alpha=1.0 - lam)
    targets = targets.mul(lam).add_(targets.roll(1, 0), alpha=1.0 - lam)
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


def cutmix(images, targets, alpha, generator=None):
    """CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899): paste a box of the partner image.

    The target weight is the exact fraction of pixels kept after clipping. alpha <= 0 is the identity.
    """
    if alpha <= 0:
        return images, targets
    lam = sample_beta(alpha, generator)
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, generator)
    images = images.clone()
    images[..., top:bottom, left:right] = images.roll(1, 0)[..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    targets = targets.mul(lam).add_(targets.roll(1, 0), alpha=1.0 - lam)
    return images, targets


class MixupCutmix:
    """(images, labels) -> (images, soft targets): smoothing, then mixup or cutmix (one per batch).

    An alpha of 0 turns that one off; both 0 leaves label smoothing alone. With both on, CutMix is chosen with
    probability `switch_prob`. Defaults are torchvision's V2 ResNet-50 recipe.
    """

    def __init__(self, num_classes, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1,
                 generator=None):
        self.num_classes, self.smoothing = num_classes, smoothing
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob
        self.generator = generator

    def __call__(self, images, labels):
        targets = one_hot(labels, self.num_classes, self.smoothing)
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if use_mixup and use_cutmix:
            use_cutmix = float(torch.rand((), generator=self.generator)) < self.switch_prob
            use_mixup = not use_cutmix
        if use_cutmix:
            return cutmix(images, targets, self.cutmix_alpha, self.generator)
        if use_mixup:
            return mixup(images, targets, self.mixup_alpha, self.generator)
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
