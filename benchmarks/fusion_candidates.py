"""Candidate layer-adaptive variants beyond LA-OOD tail + Energy (issue 17, item 5), on one full-size run.

    python -m benchmarks.fusion_candidates --run runs/cifar10/vgg16-ce8d1176/trainall-testall-ood10000-seed0

Reads what a full run saved (features, the calibrated detectors, the per-layer scores of every set) and
prints AUROC per set with near, far and mean, on the same balanced comparisons as ``summary.md``, for
LA-OOD tail + Energy (which must equal its row there) and each candidate, then each candidate's margin over
tail + Energy in near, far and mean with its paired-bootstrap interval. The candidates and the rule
that picks one were written down, in this file, before any of them was measured; the rule reads VGG16's
results only, and the pick is then measured once on the other backbones (docs/methods.md):

- **A. KNN as one more layer**: ``z_E + max(layer excesses, excess of z_KNN)``. KNN on the penultimate
  features (fitted on the detectors' train images) enters the tail rule as one more detector: its
  standardised score counts only beyond its own held-back 99th percentile, as a layer's does.
- **B. KNN and ViM as more layers**: the same with ViM's excess too.
- **C. Energy and KNN as the base**: the mean of ``z_E`` and ``z_KNN`` plus the layers' largest excess.

The rule: on VGG16, a candidate qualifies if it is no more than 0.1 under tail + Energy in near and in
far mean; of those, the one with the highest mean of near and far is the pick, if that is above tail +
Energy's. Otherwise none is picked and tail + Energy stays the headline variant.
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from utils.bootstrap import bootstrap_table
from utils.sets import NEAR_OODS
from utils.detectors import TAIL_LEVEL
from utils.features import load_features, load_head
from utils.fitting import load_calibration
from utils.methods import HELD, Inputs, get_method, standardise_on
from utils.paths import OVERVIEW_CSV, Layout, scores_file
from utils.tables import comparisons, method_row, overview


def base_z(inp: Inputs, base: str):
    """``{set: z}`` of a registered score fitted on the detectors' train images and standardised on the
    held-back ones (kept under ``HELD``)."""
    held, kept = inp.held_split()
    s = get_method(base).fn(inp.fitted_on(kept, held))
    return standardise_on({**s, "reference": s[HELD]}, "reference")


def excess(z):
    """``{set: excess}`` of a standardised score beyond its held-back ``TAIL_LEVEL`` quantile."""
    t = np.quantile(z[HELD], TAIL_LEVEL)
    return {n: np.clip(v - t, 0, None) for n, v in z.items() if n != HELD}


def candidates(inp: Inputs):
    zE, zK, zV = (base_z(inp, b) for b in ("Energy", "KNN", "ViM"))
    xK, xV = excess(zK), excess(zV)
    layers = {n: inp.calibration.tail_excess(s) for n, s in inp.layer_scores.items()}
    sets = list(inp.sets)
    return {
        "LA-OOD tail + Energy": {n: zE[n] + layers[n] for n in sets},
        "A. KNN as one more layer": {n: zE[n] + np.maximum(layers[n], xK[n]) for n in sets},
        "B. KNN and ViM as more layers": {n: zE[n] + np.maximum.reduce([layers[n], xK[n], xV[n]]) for n in sets},
        "C. Energy and KNN as the base": {n: (zE[n] + zK[n]) / 2 + layers[n] for n in sets},
    }


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a full-size run directory (runs/cifar10/MODEL-SHA/...)")
    parser.add_argument("--detectors", default="ocsvm-cal5000-seed0", help="the detectors' tag")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args):
    run = Path(args.run)
    det_dir, saved = Layout.detectors(run, args.detectors), Layout.results(run, args.detectors)
    names = ["test"] + sorted(p.stem for p in (saved / "scores").glob("*.npy") if p.stem != "test")
    sets = {n: load_features(run, n) for n in names}
    inp = Inputs(train=load_features(run, "train"), sets=sets, head=load_head(run),
                 layer_scores={n: np.load(scores_file(saved, n)).astype(np.float64) for n in names},
                 calibration=load_calibration(det_dir), seed=args.seed)
    oods = names[1:]
    scores, summary = candidates(inp), []
    pairs = comparisons(len(sets["test"]["logits"]), {n: len(sets[n]["logits"]) for n in oods}, args.seed)
    for name, i_idx, o_idx in pairs:
        if o_idx is not None:   # the combined set is left out of the means
            summary += [method_row(name, m, len(i_idx), s["test"][i_idx], s[name][o_idx]) for m, s in scores.items()]
    table = overview(summary, NEAR_OODS)
    cols = list(table[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.2f}" for v in row.values()) + " |")
    # Each candidate against tail + Energy with the paired bootstrap of the tables (utils/bootstrap.py).
    draws = bootstrap_table(scores, pairs, seed=args.seed)
    columns = draws.columns(NEAR_OODS)
    print("\nMinus LA-OOD tail + Energy, 95% paired-bootstrap interval (1,000 draws):\n")
    for name in list(scores)[1:]:
        print(f"- {name}: " + "; ".join(f"{c} {draws.margin(name, 'LA-OOD tail + Energy', columns[c]).text()}"
                                        for c in ("near", "far", "mean") if c in columns))
    saved_row = next(r for r in csv.DictReader(open(saved / OVERVIEW_CSV)) if r["method"] == "LA-OOD tail + Energy")
    gap = max(abs(float(saved_row[k]) - table[0][k]) for k in ("near", "far", "mean"))
    print(f"\nLA-OOD tail + Energy against the run's {OVERVIEW_CSV}: largest difference {gap:.4f} "
          f"({'the same' if gap < 0.005 else 'NOT the same: the run and these inputs disagree'})")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
