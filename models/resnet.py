"""CIFAR ResNets.

``resnet34``: the common CIFAR ResNet of the original LA-OOD code (1x1 conv + BN projection shortcuts).
``resnet20`` / ``resnet56``: He et al. (2016), Sec. 4.2, with option-A (parameter-free) shortcuts.
Both tap the stem convolution, the two convolutions of every block and the logits.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .taps import TappedModel


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(planes)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(TappedModel):
    def __init__(self, blocks, widths, num_classes: int = 10, option: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (n, planes) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if stage == 1 else 2
            layer = []
            for i in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, option))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.num_stages = len(blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        self.tap_names = ["conv1"] + [f"layer{s}.{i}.conv{c}" for s, n in enumerate(blocks, start=1)
                                      for i in range(n) for c in (1, 2)] + ["linear"]
        self.head_name = "linear"

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{s}")(out)
        # Global average pooling; for 32x32 inputs this is the original's 4x4 (ResNet34) or 8x8 pool.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def resnet34(num_classes: int = 10) -> ResNet:
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, option="B")


@register_model
def resnet20(num_classes: int = 10) -> ResNet:
    return ResNet([3, 3, 3], [16, 32, 64], num_classes, option="A")


@register_model
def resnet56(num_classes: int = 10) -> ResNet:
    return ResNet([9, 9, 9], [16, 32, 64], num_classes, option="A")
