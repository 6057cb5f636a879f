"""What was tried in the search for a layer-adaptive variant that also catches near-OOD (README,
"Beyond the original"): prints one AUROC row per variant on tiny / dtd / cifar100 / pure_color and the mean.

Needs a full-size run with calibrated detectors, e.g. for the shared VGG16:

    python detect_oods.py --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --model vgg16 --calibration-size 5000
    python -m benchmarks.explore_combinations --model vgg16 [--knn]

z is a layer's score standardised on the train images held back from the detectors; energy is
standardised on the same images; "tail excess at q" is how far z lies beyond the held-out q-quantile of
that layer (0 inside it). Exploratory: rows that vary a choice (q, the number of layers) must not be
used to pick it, since that would be tuning on OOD data. `--knn` adds per-layer KNN (a few minutes).
"""
import argparse
from pathlib import Path

import numpy as np

from utils.methods import KNN, Mahalanobis, energy
from utils.detectors import LAOOD, Calibration, calibration_split, early_exit
from utils.features import load_features
from utils.metrics import ood_metrics
from utils.paths import Layout, scores_file
from utils.fitting import load_detectors
from utils.tables import balanced_indices

SETS = ("tiny", "dtd", "cifar100", "pure_color")
CHECKPOINT_TAGS = {"vgg16": "vgg16-ce8d1176", "resnet20": "resnet20-12fca82f", "resnet56": "resnet56-4bfd9763"}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", choices=sorted(CHECKPOINT_TAGS))
    parser.add_argument("--run", help="run directory (default: the full-size run of the shared checkpoint)")
    parser.add_argument("--calibration-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn", action="store_true", help="also per-layer KNN (k = 50)")
    return parser


def main(args):
    run = Path(args.run or f"runs/cifar10/{CHECKPOINT_TAGS[args.model]}/trainall-testall-ood10000-seed0")
    tag = LAOOD(seed=args.seed, calibration_size=args.calibration_size).tag    # the default detectors
    la = load_detectors(run / "detectors" / tag)
    la.n_jobs = 2
    train = load_features(run, "train")
    feats = {n: load_features(run, n) for n in ("test",) + SETS}
    held, kept = calibration_split(len(train["logits"]), args.calibration_size, args.seed)

    # Per-layer One-Class SVM scores: held-out train, test and OOD sets.
    saved = Layout.results(run, tag)
    S = {n: np.load(scores_file(saved, n)) if scores_file(saved, n).exists() else la.score_layers(f["layers"])
         for n, f in feats.items()}
    S["held"] = la.score_layers([np.asarray(X[held]) for X in train["layers"]])
    E = {n: energy(f["logits"])[:, None] for n, f in feats.items()}     # (N, 1): energy as a single "layer"
    E["held"] = energy(train["logits"][held])[:, None]

    def per_layer(make):
        """Another per-layer detector fitted on the kept train features: ``{set: (N, L)}``."""
        out = {n: [] for n in S}
        for i, X in enumerate(train["layers"]):
            det = make(np.asarray(X[kept]), np.asarray(train["labels"])[kept])
            out["held"].append(det.score(np.asarray(X[held])))
            for n, f in feats.items():
                out[n].append(det.score(np.asarray(f["layers"][i])))
        return {n: np.stack(v, 1) for n, v in out.items()}

    def standardised(D):
        """Every set's scores standardised on the held-back train images: ``{set: (N, L)}``."""
        z = Calibration.fit(D["held"]).z
        return {n: z(v) for n, v in D.items()}

    def excesses(D, q=0.99):
        """Every set's per-layer excess beyond the held-back q-quantile: ``{set: (N, L)}``."""
        x = Calibration.fit(D["held"], tail_level=q).excesses
        return {n: x(v) for n, v in D.items()}

    def row(name, score):
        """One table row from ``score(set) -> (N,)``."""
        out = []
        for n in SETS:
            i, o = balanced_indices(len(S["test"]), len(S[n]), 0)
            out.append(ood_metrics(score("test")[i], score(n)[o])["auroc"])
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in out) + f" | {np.mean(out):.2f} |", flush=True)

    Z, EZ, X = standardised(S), standardised(E), excesses(S)
    e = lambda n: EZ[n][:, 0]  # noqa: E731
    print("| variant | " + " | ".join(SETS) + " | mean |\n|---|---|---|---|---|---|")
    row("LA-OOD (raw max)", lambda n: S[n].max(1))
    row("Energy", lambda n: E[n][:, 0])
    row("calibrated max", lambda n: Z[n].max(1))
    row("max over layers of z, energy as one more layer", lambda n: np.maximum(Z[n].max(1), e(n)))
    row("max of z over layers 1-4, plus energy z (4 read off OOD results)", lambda n: Z[n][:, :4].max(1) + e(n))
    cal = Calibration.fit(S["held"])
    stops = {n: early_exit(S[n], cal)[1] for n in S}
    row("early exit (0.99, k = 2), energy for images that never stop",
        lambda n: np.where(stops[n] >= 0, 1e3 * (50 - stops[n]), 0) + e(n))
    row("energy z + sum of tail excesses at 0.99", lambda n: e(n) + X[n].sum(1))
    for q in (0.95, 0.99, 0.999):
        Xq = X if q == 0.99 else excesses(S, q)
        row(f"energy z + max tail excess at {q}{' (LA-OOD tail + Energy)' if q == 0.99 else ''}",
            lambda n, Xq=Xq: e(n) + Xq[n].max(1))
    # Atypically small activations: each layer's feature norm, its lower tail (negated, so small = high).
    norms = {n: -np.stack([np.linalg.norm(np.asarray(L), axis=1) for L in f["layers"]], 1) for n, f in feats.items()}
    norms["held"] = -np.stack([np.linalg.norm(np.asarray(L[held]), axis=1) for L in train["layers"]], 1)
    XN = excesses(norms)
    row("LA-OOD tail + Energy, plus max tail excess at 0.99 of small feature norms",
        lambda n: e(n) + np.maximum(X[n].max(1), XN[n].max(1)))
    others = {"Mahalanobis": lambda A, y: Mahalanobis().fit(A, y)}
    if args.knn:
        others["KNN"] = lambda A, y: KNN(k=50).fit(A)
    for name, make in others.items():
        D = per_layer(make)
        ZD, XD = standardised(D), excesses(D)
        row(f"per-layer {name}, calibrated max", lambda n: ZD[n].max(1))
        row(f"energy z + max tail excess at 0.99 of per-layer {name}", lambda n: e(n) + XD[n].max(1))

if __name__ == "__main__":
    main(get_args_parser().parse_args())
