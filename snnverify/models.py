"""Reference architectures: CIFAR-style ResNet-18 and ResNet-20, a small ResNet for CPUs,
torchvision's ResNet-18 as published (one ReLU module reused twice per block, a max-pool), and
two shapes without residual merges: a VGG with max-pools and a two-layer classifier, and a
MobileNet-style stack of depthwise-separable blocks.

All take ``num_classes`` and ``in_channels`` so that they fit any dataset in ``snnverify.data``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); 1x1 conv + BN shortcut when the shape changes.

    Activations are functional (``F.relu``), unlike torchvision's reused module, so that both
    forms are exercised by the converter."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem without max-pool (``stem_pool``: a 2x2 average pool after
    it), stages of basic blocks, global average pool."""

    def __init__(self, widths: list[int], blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 stem_pool: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stem_pool = nn.AvgPool2d(2) if stem_pool else nn.Identity()
        stages, channels = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(count):
                layers.append(BasicBlock(channels, width, stride=2 if i > 0 and j == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem_pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 for 32x32 inputs (widths 64-512, 2 blocks per stage), as in QCFS's Table 1."""
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-20 (He et al. 2016, CIFAR variant: widths 16-64, 3 blocks per stage; conv shortcuts)."""
    return ResNet([16, 32, 64], [3, 3, 3], num_classes, in_channels)


def small_resnet(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """A 3-block ResNet (widths 16, 32, 64) that trains on two CPU cores in minutes."""
    return ResNet([16, 32, 64], [1, 1, 1], num_classes, in_channels)


def small_resnet_pooled(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """The 19.7k-parameter network the peers were measured on (../shared/PEER_FIGURES.md): a
    16-channel stem, a 2x2 average pool, blocks of 16 and 32 channels (the second strided)."""
    return ResNet([16, 32], [1, 1], num_classes, in_channels, stem_pool=True)


def torchvision_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """``torchvision.models.resnet18(num_classes=...)`` unchanged but for the stem's input channels."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def vgg11(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """VGG-11 for small images (Simonyan & Zisserman 2015, configuration A, with BatchNorm): 3x3
    conv + BN + ReLU stages, the first four closed by a 2x2 max-pool; a global average pool, then
    VGG's classifier (4096, 4096, classes), whose first layer, converted, reads a pooled spike map."""
    layers, channels = [], in_channels
    for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512):
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 4096), nn.ReLU(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))


def mobilenet_small(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """A MobileNet-style network (Howard et al. 2017): a 32-channel stem, then five
    depthwise-separable blocks — a 3x3 depthwise conv (one group per channel) + BN + ReLU, a 1x1
    pointwise conv + BN + ReLU — to 64, 128 (strided), 128, 256 (strided) and 256 channels; a
    global average pool and a linear layer."""
    layers, channels = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()], 32
    for width, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
        layers += [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(), nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


MODELS = {
    "small_resnet": small_resnet,
    "small_resnet_pooled": small_resnet_pooled,
    "resnet20": resnet20,
    "cifar_resnet18": cifar_resnet18,
    "torchvision_resnet18": torchvision_resnet18,
    "vgg11": vgg11,
    "mobilenet_small": mobilenet_small,
}


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A freshly initialised model from :data:`MODELS`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict in a file saved with ``torch.save(model.state_dict(), path)``, loaded with
    ``weights_only=True``. Raises FileNotFoundError, or ValueError naming the file when it holds
    anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # (torch's own message advises loading with weights_only=False: not advice to pass on)
        raise ValueError(f"checkpoint {os.fspath(path)!r} is not a PyTorch state dict file (one written by "
                         f"torch.save(model.state_dict(), path)): torch.load(weights_only=True) cannot read it "
                         f"({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load :func:`read_state_dict` ``(path)`` into ``model``; raises ValueError naming the file
    when it does not match the model."""
    state = read_state_dict(path)
    expected = model.state_dict()
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in state]),
                        ("unexpected", [k for k in state if k not in expected])):
        if keys:
            problems.append(f"{len(keys)} {label} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    problems += [
        f"size mismatch for {k}: checkpoint {list(v.shape)}, model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not match {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return model
