"""Input normalisation, which travels with a model's weights.

A checkpoint written by this repository records the mean and std its model was trained with; plain
state dicts take the registry recipe's default (``imagenet``, as the original code and the shared VGG16
and ResNets use), or what ``--normalization`` says (the DICE DenseNet was trained with ``cifar``).
"""
from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Normalization:
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    name: str = "custom"

    def as_dict(self) -> Dict:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Dict) -> "Normalization":
        return cls(tuple(map(float, d["mean"])), tuple(map(float, d["std"])), d.get("name", "custom"))

    def same_as(self, other: "Normalization") -> bool:
        return all(abs(a - b) < 1e-6 for a, b in zip(self.mean + self.std, other.mean + other.std))


PRESETS = {
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    "cifar": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar"),
}


def parse_normalization(text: str) -> Normalization:
    """``imagenet``, ``cifar`` or six numbers ``m1,m2,m3,s1,s2,s3`` (means, then stds, in [0, 1] units)."""
    if text in PRESETS:
        return PRESETS[text]
    try:
        values = [float(v) for v in text.replace("/", ",").split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or any(s <= 0 for s in values[3:]):
        raise ValueError(f"normalisation {text!r}: give a preset ({', '.join(PRESETS)}) or six numbers "
                         f"'mean_r,mean_g,mean_b,std_r,std_g,std_b' with positive stds")
    return Normalization(tuple(values[:3]), tuple(values[3:]))
