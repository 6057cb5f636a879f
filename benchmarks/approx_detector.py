"""The approximate One-Class SVM (ocsvm-approx) against the exact one, side by side on the same features.

    python benchmarks/approx_detector.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt

Fits the whole detector stage (every layer: scaler, SAS gamma selection, final fit; 2 layers at a time)
with ``ocsvm`` and with ``ocsvm-approx`` on the run's train features (all 50,000 by default), and prints
the fit times, their ratio and the LA-OOD AUROC of both on every OOD set (balanced comparisons).
Needs the run's features (run_pipeline.py, or generate_datasets.py + save_inter_outputs.py).
"""
import argparse
import time

import numpy as np

from detector_speed import find_run, la_auroc
from utils.detectors import LAOOD


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="backbone whose features are used")
    p.add_argument("--runs-root", default="runs", help="root of the runs")
    p.add_argument("--ind", default="cifar10", help="in-distribution set")
    p.add_argument("--n-train", type=int, default=None, help="seeded subset of train features (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, the split and the evaluation")
    p.add_argument("--jobs", type=int, default=2, help="layers fitted in parallel")
    args = p.parse_args()
    run, train, test, oods = find_run(args.checkpoint, args.runs_root, args.ind)
    n = len(train["logits"])
    idx = np.sort(np.random.default_rng(args.seed).choice(n, min(args.n_train or n, n), replace=False))
    layers = [np.asarray(X[idx]) for X in train["layers"]]
    print(f"features: {run}; {len(idx)} train features, {len(layers)} layers; OOD sets: {', '.join(oods)}\n")
    seconds, auroc, gammas = {}, {}, {}
    for detector in ("ocsvm", "ocsvm-approx"):
        t = time.perf_counter()
        la = LAOOD(detector=detector, seed=args.seed, n_jobs=args.jobs).fit(layers)
        seconds[detector] = time.perf_counter() - t
        auroc[detector] = la_auroc(la.detectors_, test, oods, args.seed)
        gammas[detector] = [r["gamma"] for r in la.records_]
        print(f"{detector}: {seconds[detector]:.1f} s; gammas {gammas[detector]}")
    ratio = seconds["ocsvm"] / seconds["ocsvm-approx"]
    print(f"\nfit time: exact {seconds['ocsvm']:.0f} s, approximate {seconds['ocsvm-approx']:.0f} s: {ratio:.1f}x faster\n")
    print("| OOD set | ocsvm AUROC | ocsvm-approx AUROC | difference |\n|---|---|---|---|")
    for name in oods:
        a, b = auroc["ocsvm"][name], auroc["ocsvm-approx"][name]
        print(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    mean = {d: np.mean(list(auroc[d].values())) for d in auroc}
    print(f"| mean | {mean['ocsvm']:.2f} | {mean['ocsvm-approx']:.2f} | {mean['ocsvm-approx'] - mean['ocsvm']:+.2f} |")


if __name__ == "__main__":
    main()
