"""NAC-UE under two settings, on the features of a finished run: why its registry row is weak here.

    python -m benchmarks.nac_settings --run runs/cifar10/resnet20-12fca82f/trainall-testall-ood10000-seed0

The registry's ``NAC-UE`` (``--nac`` in stage 2) uses every tapped layer with pytorch-ood's defaults (sigmoid
alpha 100, M = 50 bins, O* = 50) and coverage counted on all the detectors' train images. NAC-UE's authors
(Liu et al., ICLR 2024; their repository's CIFAR-10 configuration) instead count on 1,000 train images, at
four block-level layers of a ResNet-18 with per-layer constants that their automatic parameter search chose
with OOD validation data: avgpool (alpha 100, M 50, O* 50), layer3 (alpha 1000, M 500, O* 100), and layer2
and layer1 with alpha 0.001, where every state falls in one bin and the coverage is a constant.

Both live layers can be computed from the penultimate features and the head alone: for the pooled features
z, dKL(u || softmax)/dz = W^T (softmax - 1/C), and the last stage's map x (with z its spatial mean over H x W
positions) has per-channel mean of x * dKL/dx equal to z * dKL/dz / (H W). This prints the AUROC per set of
(a) the avgpool layer alone and (b) avgpool plus layer3, at 1,000 and at all train images, next to the
registry's row when the run has it. ``--last-map`` is H x W of the last map (64 for the CIFAR ResNet-20/56
and DenseNet-BC, 16 for this repository's ResNet34, 1 for the original VGG16).
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from utils.sets import NEAR_OODS
from utils.features import load_head
from utils.metrics import ood_metrics
from utils.nac import Coverage
from utils.splits import held_split

AUTHORS = {"avgpool": (100.0, 50, 50), "layer3": (1000.0, 500, 100)}   # alpha, M, O* of their CIFAR-10 config


def states(penultimate: np.ndarray, head) -> np.ndarray:
    """z * dKL(u || softmax)/dz per image and channel of the pooled features z (float32)."""
    weight, bias = head
    z = np.asarray(penultimate, dtype=np.float64)
    logits = z @ weight.T + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (z * ((p - 1.0 / p.shape[1]) @ weight)).astype(np.float32)


def nac_scores(train: np.ndarray, sets, layers, last_map: int):
    total = {s: 0.0 for s in sets}
    for name in layers:
        alpha, m, o_star = AUTHORS[name]
        scale = 1.0 if name == "avgpool" else 1.0 / last_map
        coverage = Coverage([train.shape[1]], alpha=alpha, m=m, o_star=o_star).fit(train * scale)
        for s, v in sets.items():
            total[s] = total[s] + coverage.score(v * scale)
    return total


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="runs/<ind>/<model>-<sha>/<data tag>")
    p.add_argument("--last-map", type=int, default=64, help="H x W of the map the penultimate features pool")
    p.add_argument("--train", type=int, nargs="+", default=[1000, 0], help="train images counted (0: all)")
    return p


def main(args):
    feats = args.run / "features"
    head = load_head(args.run)
    oods = sorted(d.name for d in feats.iterdir() if d.is_dir() and d.name not in ("train", "test"))
    sets = {s: states(np.load(feats / s / "penultimate.npy"), head) for s in ["test"] + oods}
    train_all = np.load(feats / "train" / "penultimate.npy", mmap_mode="r")
    near = [s for s in oods if s in NEAR_OODS]
    print("| setting | train images | " + " | ".join(oods) + " | near | far |")
    print("|---" * (4 + len(oods)) + "|")
    for n in args.train:
        idx = np.sort(held_split(len(train_all), n, 0)[0]) if 0 < n < len(train_all) else np.arange(len(train_all))
        train = states(train_all[idx], head)
        for layers in (["avgpool"], ["avgpool", "layer3"]):
            score = nac_scores(train, sets, layers, args.last_map)
            au = {s: ood_metrics(score["test"], score[s])["auroc"] for s in oods}
            print(f"| {' + '.join(layers)} | {len(idx)} | " + " | ".join(f"{au[s]:.2f}" for s in oods)
                  + f" | {np.mean([au[s] for s in near]):.2f} | {np.mean([au[s] for s in oods if s not in near]):.2f} |")
    overview = sorted(args.run.glob("results/*/overview.csv"))
    for path in overview[:1]:
        for row in csv.DictReader(open(path)):
            if row["method"] == "NAC-UE (pytorch-ood)":
                print("| registry NAC-UE (every tap, pytorch-ood defaults) | all | "
                      + " | ".join(f"{float(row[s]):.2f}" for s in oods)
                      + f" | {float(row['near']):.2f} | {float(row['far']):.2f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
