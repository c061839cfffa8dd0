"""He (Kaiming) initialisation for training a ResNet from random weights.

Needs only torch; works on model.py's ResNets and on torchvision's. Copy it alone into another project.

    python -c "import init, model; init.init_weights(model.resnet50(), zero_init_residual=True)"

What torchvision already does (torchvision/models/resnet.py, `ResNet.__init__`): every Conv2d gets
`kaiming_normal_(mode='fan_out', nonlinearity='relu')`, every BatchNorm weight 1 and bias 0, and, only if asked
with `zero_init_residual=True`, the last BatchNorm weight of each residual block 0. It does NOT touch `fc`, which
keeps PyTorch's `nn.Linear` default (kaiming_uniform_ with a=sqrt(5), i.e. U(-1/sqrt(2048), 1/sqrt(2048)) for the
weight, and a uniform bias). `init_weights(model, fc_std=None)` reproduces exactly that, bit for bit from the
same seed; the default `fc_std=0.01` is the N(0, 0.01) fc init of Goyal et al. 2017
(https://arxiv.org/abs/1706.02677, section 5.1) and of the original ResNet Torch code.

Why fan_out: He et al. 2015 (https://arxiv.org/abs/1502.01852) show that either fan_in (forward signal) or
fan_out (backward signal) keeps variance stable; torchvision uses fan_out, and so do we.
"""
import math

import torch
from torch import nn


def _last_bn_of_residual_block(block):
    """The last BatchNorm on the residual branch of a block (bn2 of a BasicBlock, bn3 of a Bottleneck)."""
    bns = [m for name, m in block.named_children() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1] if bns else None


@torch.no_grad()
def init_weights(model, zero_init_residual=False, fc_std=0.01):
    """He-initialise `model` in place and return it.

    - Conv2d: kaiming_normal_(fan_out, relu), i.e. N(0, 2/fan_out) with fan_out = out_channels * kh * kw.
    - BatchNorm: weight 1, bias 0.
    - Linear: weight N(0, fc_std), bias 0; `fc_std=None` leaves Linear layers untouched (torchvision's behaviour).
    - zero_init_residual: the last BatchNorm weight of each residual block is 0, so every block starts as the
      identity (Goyal et al. 2017, section 5.1). A residual block is any module with a `downsample` attribute,
      which is how both model.py and torchvision define them.

    Modules are visited in `model.modules()` order, the same as torchvision's constructor, so the random numbers
    drawn match its own.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if fc_std is not None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, fc_std)
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if hasattr(m, "downsample"):
                bn = _last_bn_of_residual_block(m)
                if bn is not None:
                    nn.init.zeros_(bn.weight)
    return model


def expected_conv_std(conv):
    """The standard deviation kaiming_normal_(fan_out, relu) aims for: sqrt(2 / fan_out)."""
    kh, kw = conv.kernel_size
    return math.sqrt(2.0 / (conv.out_channels * kh * kw))
