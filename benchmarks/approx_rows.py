"""Every row the layer detectors feed, exact against approximate: the AUROC of LA-OOD, LA-OOD (calibrated), early
exit and every LA-OOD tail row on every OOD set, from two detection results of one run.

    python train_ood_detectors.py --checkpoint C --detector ocsvm-approx --calibration-size 5000 ...
    python detect_oods.py --checkpoint C --detector ocsvm-approx --calibration-size 5000 ...
    python -m benchmarks.approx_rows --run runs/cifar10/vgg16-ce8d1176/trainall-testall-ood10000-seed0

Reads ``results/<exact tag>/summary.csv`` and ``results/<approx tag>/summary.csv`` of the run and prints, per
row and set, the exact AUROC and the approximation's difference, and the largest difference of each row.
"""
import argparse
import csv
from pathlib import Path

from utils.paths import SUMMARY_CSV, Layout

ROWS = ("LA-OOD", "LA-OOD (calibrated)", "early exit")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="runs/<ind>/<model>-<sha>/<data tag>")
    p.add_argument("--exact", default="ocsvm-cal5000-seed0", help="the exact detectors' results tag")
    p.add_argument("--approx", default="ocsvm-approx-cal5000-seed0", help="the approximate detectors' results tag")
    return p


def auroc_table(path: Path):
    with open(path) as f:
        return {(r["method"], r["ood"]): float(r["auroc"]) for r in csv.DictReader(f)}


def main(args):
    exact = auroc_table(Layout.results(args.run, args.exact) / SUMMARY_CSV)
    approx = auroc_table(Layout.results(args.run, args.approx) / SUMMARY_CSV)
    methods = [m for m in dict.fromkeys(m for m, _ in exact) if m in ROWS or m.startswith("LA-OOD tail")]
    sets = [s for s in dict.fromkeys(s for _, s in exact) if s != "combined"] + ["combined"]
    print(f"{args.run}: {args.approx} against {args.exact}, AUROC (difference)\n")
    print("| row | " + " | ".join(sets) + " | largest abs difference |\n|---|" + "---|" * (len(sets) + 1))
    worst_all = 0.0
    for m in methods:
        diffs = {s: approx[(m, s)] - exact[(m, s)] for s in sets if (m, s) in approx}
        worst = max(abs(d) for s, d in diffs.items() if s != "combined")
        worst_all = max(worst_all, worst)
        print(f"| {m} | " + " | ".join(f"{exact[(m, s)]:.2f} ({diffs[s]:+.2f})" for s in sets) + f" | {worst:.2f} |")
    print(f"\nlargest difference of any row on any set (combined aside): {worst_all:.2f}")
    return worst_all


if __name__ == "__main__":
    main(get_args_parser().parse_args())
