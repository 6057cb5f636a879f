"""Scoring the One-Class SVM layers: the detectors' own decision function (NumPy) against torch on a device.

    python -m benchmarks.score_speed --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --device cpu

Loads the run's detectors (``--tag``, default ``ocsvm-seed0`` as train_ood_detectors.py writes them) and scores the test
split's features of every layer three ways, side by side, best of ``--repeats``: the detectors'
``decision_function`` (NumPy matrix products in float64, one layer at a time, what detection uses by default),
torch in float64 and torch in float32 on ``--device``. Prints images per second, the ratio to NumPy and the
largest difference from it.
"""
import argparse
import time

import numpy as np
import torch

from benchmarks.detector_speed import find_run
from utils.detectors import LAOOD, ood_score
from utils.fitting import load_detectors
from utils.paths import Layout
from utils.detectors.torch_scoring import torch_ood_score


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="backbone whose run is used")
    p.add_argument("--runs-root", default="runs", help="root of the runs")
    p.add_argument("--ind", default="cifar10", help="in-distribution set")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--images", type=int, default=5000, help="test images scored")
    p.add_argument("--repeats", type=int, default=2, help="rounds; the best counts")
    p.add_argument("--tag", default=LAOOD(seed=0).tag,
                   help="detector directory of the run (default: the default detectors, ocsvm-seed0; e.g. "
                        "ocsvm-cal5000-seed0)")
    return p


def main(args):
    run, _, test, _ = find_run(args.checkpoint, args.runs_root, args.ind)
    det_dir = Layout.detectors(run, args.tag)
    la = load_detectors(det_dir)
    layers = [np.asarray(X[:args.images]) for X in test["layers"]]
    n_sv = sum(len(d[-1].support_vectors_) for d in la.detectors_)
    print(f"{det_dir}: {len(la.detectors_)} layers, {n_sv:,} support vectors in all; {args.images:,} test images; "
          f"{torch.get_num_threads()} torch threads, {args.device}\n")
    ways = {"NumPy float64 (default)": lambda: [ood_score(d, X) for d, X in zip(la.detectors_, layers)],
            f"torch float64 on {args.device}": lambda: [torch_ood_score(d, X, args.device, torch.float64)
                                                        for d, X in zip(la.detectors_, layers)],
            f"torch float32 on {args.device}": lambda: [torch_ood_score(d, X, args.device, torch.float32)
                                                        for d, X in zip(la.detectors_, layers)]}
    results = {name: timed(fn, args.repeats) for name, fn in ways.items()}
    base_s, base = results["NumPy float64 (default)"]
    print("| scoring | img/s (all layers) | vs NumPy | max abs difference |\n|---|---|---|---|")
    for name, (seconds, out) in results.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out, base))
        print(f"| {name} | {args.images / seconds:,.0f} | {base_s / seconds:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
