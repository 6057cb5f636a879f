"""VGG16 with BatchNorm in the layout of the original LA-OOD code (its ``state_dict`` keys load strictly)."""
import torch.nn as nn

from .registry import register_model
from .taps import TappedModel

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(TappedModel):
    def __init__(self, cfg, num_classes: int = 10):
        super().__init__()
        layers, in_ch = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )
        # LA-OOD taps each convolution's output before its BatchNorm: 13 layers.
        self.tap_names = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        self.head_name = "classifier.6"

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model(recipe=dict(epochs=300, batch_size=128, lr=0.05, weight_decay=5e-4, step_size=30, gamma=0.5))
def vgg16(num_classes: int = 10) -> VGG:
    return VGG(_VGG16, num_classes)
