"""Detector stage: this repository's LA-OOD against the original procedure, side by side on the same features.

The reference re-implements the original code's procedure plainly: one layer at a time, a scaler on
all train features, a 70/30 split, SAS with a Python loop over points, all seven gammas fitted on the
70% part, and a refit on all train features. Both are timed over the whole detector stage
(standardise, shift, select, refit) and both are scored on the same balanced OOD comparisons.

    python -m benchmarks.detector_speed --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --n-train 10000

Needs the run's features (run_pipeline.py, or generate_datasets.py + save_inter_outputs.py).
"""
import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from tqdm import tqdm

from utils.detectors import GAMMAS, LAOOD, NU, sas_k
from utils.features import load_features
from utils.io import sha256_file
from utils.metrics import ood_metrics
from utils.tables import balanced_indices


def reference_layer(X, seed):
    """The original procedure for one layer, written plainly."""
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    fit_part, val_part = train_test_split(Z, test_size=0.3, random_state=seed)
    k = sas_k(len(val_part))
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(val_part).kneighbors(val_part)
    outliers, edge_dists = [], []
    for i in range(len(val_part)):
        v = val_part[i] - val_part[idx[i, 1:]]
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        normal = v.sum(0)
        if np.mean(v @ normal >= 0) > 1 - 0.01:
            outliers.append((i, normal / max(np.linalg.norm(normal), 1e-12)))
            edge_dists.append(dist[i])
    length = np.mean(edge_dists) if edge_dists else 0.0
    pseudo = np.array([val_part[i] + length * u for i, u in outliers]).reshape(-1, Z.shape[1])
    best_err, best_gamma = np.inf, None
    for gamma in GAMMAS:
        svm = OneClassSVM(gamma=gamma, nu=NU).fit(fit_part)
        accepted = np.mean(svm.predict(pseudo) == 1) if len(pseudo) else 0.0
        err = 0.5 * accepted + 0.5 * np.mean(svm.predict(val_part) == -1)
        if err < best_err:
            best_err, best_gamma = err, gamma
    if best_err < 1.0:
        svm = OneClassSVM(gamma=best_gamma, nu=NU).fit(Z)
    else:
        best_gamma = 1.0 / (Z.shape[1] * fit_part.std())
        svm = OneClassSVM(gamma=best_gamma, nu=0.5).fit(Z)
    return Pipeline([("scale", scaler), ("svm", svm)]), best_gamma


def la_auroc(detectors, test, oods, seed, device=None):
    """LA-OOD's AUROC on every OOD set (balanced comparisons); ``device``: the RBF One-Class SVM layers are
    scored with torch there (``LAOOD.score_layers``), the others by scikit-learn."""
    la = LAOOD()
    la.detectors_ = list(detectors)
    ind = la.score_layers(test["layers"], device).max(1)
    out = {}
    for name, f in oods.items():
        ood = la.score_layers(f["layers"], device).max(1)
        i, o = balanced_indices(len(ind), len(ood), seed)
        out[name] = ood_metrics(ind[i], ood[o])["auroc"]
    return out


def find_run(checkpoint, runs_root, ind):
    """``(run, train, test, {ood name: features})`` of the run of ``checkpoint`` with the most train features."""
    sha = sha256_file(checkpoint)[:8]
    runs = sorted(glob.glob(str(Path(runs_root) / ind / f"*-{sha}" / "*")))
    runs = [r for r in runs if (Path(r) / "features" / "train" / "manifest.json").exists()]
    if not runs:
        sys.exit(f"no features of checkpoint {sha} under {runs_root}; run run_pipeline.py first")
    run = Path(max(runs, key=lambda r: load_features(Path(r), "train")["manifest"]["count"]))
    oods = {p.name: load_features(run, p.name) for p in sorted((run / "features").iterdir())
            if p.name not in ("train", "test") and (p / "manifest.json").exists()}
    return run, load_features(run, "train"), load_features(run, "test"), oods


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="backbone whose features are used")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="root of the runs")
    p.add_argument("--ind", default="cifar10", help="in-distribution set")
    p.add_argument("--n-train", type=int, default=10000, help="seeded subset of train features fitted on")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, the split and the evaluation")
    p.add_argument("--jobs", type=int, default=-1, help="parallel layers for this repository's version")
    p.add_argument("--skip-reference", action="store_true", help="time only this repository's version")
    return p


def main(args):
    run, train, test, oods = find_run(args.checkpoint, args.runs_root, args.ind)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(train["logits"]), min(args.n_train, len(train["logits"])),
                                                          replace=False))
    layers = [np.asarray(X[idx]) for X in train["layers"]]
    print(f"features: {run}; {len(idx)} train features, {len(layers)} layers; OOD sets: {', '.join(oods)}")

    t = time.perf_counter()
    la = LAOOD(seed=args.seed, n_jobs=args.jobs).fit(layers)
    ours_s = time.perf_counter() - t
    ours = la_auroc(la.detectors_, test, oods, args.seed)
    print(f"this repository: {ours_s:.1f} s; gammas {[r['gamma'] for r in la.records_]}")
    if args.skip_reference:
        print({k: round(v, 2) for k, v in ours.items()})
        return
    t = time.perf_counter()
    ref = [reference_layer(X, args.seed) for X in tqdm(layers, desc="reference layers")]
    ref_s = time.perf_counter() - t
    ref_auroc = la_auroc([d for d, _ in ref], test, oods, args.seed)
    print(f"reference (original procedure): {ref_s:.1f} s; gammas {[g for _, g in ref]}")
    print(f"\nspeed-up: {ref_s / ours_s:.1f}x  ({ref_s:.1f} s / {ours_s:.1f} s)")
    print("| OOD set | reference AUROC | this repository AUROC | difference |\n|---|---|---|---|")
    for name in oods:
        print(f"| {name} | {ref_auroc[name]:.2f} | {ours[name]:.2f} | {ours[name] - ref_auroc[name]:+.2f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
