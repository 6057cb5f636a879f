"""DenseNet-BC (Huang et al., 2017), depth 100, growth rate 12, reduction 0.5, as in the original LA-OOD code."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .taps import TappedModel


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        inter = 4 * growth
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, growth: int):
        super().__init__()
        self.layer = nn.Sequential(*[Bottleneck(in_planes + i * growth, growth) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class DenseNet3(TappedModel):
    def __init__(self, depth: int = 100, growth: int = 12, reduction: float = 0.5, num_classes: int = 10):
        super().__init__()
        n = (depth - 4) // 6   # bottleneck layers per block
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        self.block1 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.trans1 = Transition(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block2 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.trans2 = Transition(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block3 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.bn1 = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)
        convs = lambda b: [f"block{b}.layer.{i}.conv{c}" for i in range(n) for c in (1, 2)]  # noqa: E731
        self.tap_names = (["conv1"] + convs(1) + ["trans1.conv1"] + convs(2) + ["trans2.conv1"] + convs(3)
                          + ["fc"])
        self.head_name = "fc"

    def forward(self, x):
        out = self.trans1(self.block1(self.conv1(x)))
        out = self.trans2(self.block2(out))
        out = F.relu(self.bn1(self.block3(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# DenseNet-BC on CIFAR is published with CIFAR's own mean and std (ODIN's and DICE's checkpoints): the
# default for plain state-dict files such as the shared DICE checkpoint.
# gammas: the One-Class SVM grid of its detectors, the original's widened as its code meant DenseNet to search
# (a name mismatch there meant it never did).
@register_model(recipe=dict(epochs=300, batch_size=64, lr=0.1, weight_decay=1e-4, milestones=[150, 225],
                            gamma=0.1, normalization="cifar",
                            gammas=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)))
def densenet100(num_classes: int = 10) -> DenseNet3:
    return DenseNet3(100, 12, 0.5, num_classes)
