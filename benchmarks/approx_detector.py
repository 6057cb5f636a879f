"""The approximate One-Class SVM (ocsvm-approx) against the exact one, side by side on the same features.

    python -m benchmarks.approx_detector --checkpoint ../shared/checkpoints/vgg16-cifar10.pt

Fits the whole detector stage (every layer: scaler, SAS gamma selection, final fit; 2 layers at a time)
with ``ocsvm`` and with ``ocsvm-approx`` (at each ``--components`` landmark count) on the run's train
features (all 50,000 by default), one after the other in this process, and prints the fit times, their
ratios, the gammas chosen per layer and the LA-OOD AUROC of each on every OOD set (balanced comparisons).
The exact detectors are scored with the torch decision function in float64 (equal to scikit-learn's to
1e-9, and several times faster); scoring is not part of the timed fit.
Needs the run's features (run_pipeline.py, or generate_datasets.py + save_inter_outputs.py).
"""
import argparse
import time

import numpy as np

from benchmarks.detector_speed import find_run, la_auroc
from utils.detectors import LAOOD
from utils.detectors.approx import ApproxOCSVM
from utils.detectors.ocsvm import ExactOCSVM

EXACT, APPROX = ExactOCSVM.name, ApproxOCSVM.name


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="backbone whose features are used")
    p.add_argument("--runs-root", default="runs", help="root of the runs")
    p.add_argument("--ind", default="cifar10", help="in-distribution set")
    p.add_argument("--n-train", type=int, default=None, help="seeded subset of train features (default: all)")
    p.add_argument("--components", type=int, nargs="+", default=[512, 1024, 2048],
                   help="landmark counts of the approximation to compare (default: 512 1024 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, the split and the evaluation")
    p.add_argument("--jobs", type=int, default=2, help="layers fitted in parallel")
    p.add_argument("--select-size", type=int, default=None,
                   help="the approximation's gamma subsample (default: the detector's, APPROX_SELECT_SIZE)")
    return p


def main(args):
    run, train, test, oods = find_run(args.checkpoint, args.runs_root, args.ind)
    n = len(train["logits"])
    idx = np.sort(np.random.default_rng(args.seed).choice(n, min(args.n_train or n, n), replace=False))
    layers = [np.asarray(X[idx]) for X in train["layers"]]
    print(f"features: {run}; {len(idx)} train features, {len(layers)} layers; OOD sets: {', '.join(oods)}\n")
    variants = {EXACT: dict(detector=EXACT)}
    variants.update({f"{APPROX} ({m})": dict(detector=APPROX, n_components=m, select_size=args.select_size)
                     for m in args.components})
    seconds, auroc, gammas = {}, {}, {}
    for name, kwargs in variants.items():
        t = time.perf_counter()
        la = LAOOD(seed=args.seed, n_jobs=args.jobs, **kwargs).fit(layers)
        seconds[name] = time.perf_counter() - t
        gammas[name] = [r["gamma"] for r in la.records_]
        t = time.perf_counter()
        auroc[name] = la_auroc(la.detectors_, test, oods, args.seed, device="cpu")
        print(f"{name}: fit {seconds[name]:.1f} s (scored in {time.perf_counter() - t:.0f} s)")
    names = list(variants)
    print("\n| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    print("| fit time (s) | " + " | ".join(f"{seconds[v]:.0f}" for v in names) + " |")
    print("| x faster than exact | " + " | ".join(f"{seconds[EXACT] / seconds[v]:.1f}" for v in names) + " |")
    for name in oods:
        print(f"| AUROC {name} | {auroc[EXACT][name]:.2f} | "
              + " | ".join(f"{auroc[v][name]:.2f} ({auroc[v][name] - auroc[EXACT][name]:+.2f})" for v in names[1:])
              + " |")
    mean = {v: np.mean(list(auroc[v].values())) for v in names}
    print(f"| AUROC mean | {mean[EXACT]:.2f} | "
          + " | ".join(f"{mean[v]:.2f} ({mean[v] - mean[EXACT]:+.2f})" for v in names[1:]) + " |")
    print("\ngamma per layer:")
    for v in names:
        print(f"  {v}: {gammas[v]}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
