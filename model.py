"""ResNet-50 (and 18/34/101/152) written by hand, structurally identical to torchvision's.

Needs only torch (torchvision only inside `torchvision_resnet50`), so it copies alone. Same module names, state_dict
keys, shapes, module creation order and use of the random generator as `torchvision.models.resnet50(weights=None)`:
a checkpoint of either loads into the other with strict=True, and the same weights give the same outputs. Layers
keep PyTorch's default init here; `init.py` applies the He init (`init_weights(resnet50(), fc_std=None)` is
torchvision's constructor bit for bit from the same seed), and `create_model` does both.

    python -c "import model; m = model.resnet50(); print(sum(p.numel() for p in m.parameters()))"  # 25557032
"""
import functools

import torch
from torch import nn


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152).

    V1.5: the stride sits on the 3x3 conv (conv2), not on the first 1x1 as in He et al. 2015
    (https://arxiv.org/abs/1512.03385). A strided 1x1 simply drops 3 of every 4 input positions; the strided 3x3
    sees them all. NVIDIA's "ResNet-50 v1.5" model card reports about +0.5% top-1 for ~12% more FLOPs
    (https://catalog.ngc.nvidia.com/orgs/nvidia/resources/resnet_50_v1_5_for_pytorch), and torchvision's
    `Bottleneck` does the same, so weights move between the two unchanged.
    """
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        # Registration order (conv1, bn1, conv2, ...) fixes state_dict order and modules() order, which init.py
        # walks with the random generator: it must match torchvision's exactly for bit-identical init.
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # V1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Created before the first block, as torchvision does: creation order decides which random numbers
            # each conv's default init draws.
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# The family, as torchvision defines it: block type and blocks per stage. resnet50(num_classes=10) and so on.
resnet18 = functools.partial(ResNet, BasicBlock, [2, 2, 2, 2])
resnet34 = functools.partial(ResNet, BasicBlock, [3, 4, 6, 3])
resnet50 = functools.partial(ResNet, Bottleneck, [3, 4, 6, 3])
resnet101 = functools.partial(ResNet, Bottleneck, [3, 4, 23, 3])
resnet152 = functools.partial(ResNet, Bottleneck, [3, 8, 36, 3])


def torchvision_resnet50(num_classes=1000):
    """torchvision's own ResNet-50, randomly initialised by its constructor (no download)."""
    import torchvision
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


MODELS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
          "resnet152": resnet152, "tv_resnet50": torchvision_resnet50}


def create_model(name, num_classes=1000):
    """Build a model by name, ready for from-scratch training.

    Ours ('resnet50', ...) are built and then He-initialised by init.py exactly as torchvision's constructor does
    (`fc` keeps PyTorch's default); 'tv_resnet50' is torchvision's, whose constructor does that itself. So, from
    the same seed, both names give bit-identical weights. Recipe-level choices (zero-init residual, fc std) are
    applied by the caller with `init.init_weights`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    model = MODELS[name](num_classes=num_classes)
    if name != "tv_resnet50":
        from init import init_weights  # init.py sits beside this file; only needed for our own models
        init_weights(model, fc_std=None)
    return model
