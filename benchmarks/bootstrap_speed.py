"""Time of the paired bootstrap behind one backbone's margins, against resampling and calling sklearn per draw.

    python -m benchmarks.bootstrap_speed                       # a backbone-sized table: 28 methods, 5 OOD sets
    python -m benchmarks.bootstrap_speed --resamples 1000 --naive-draws 5

The table has the shape of a full CIFAR-10 run: 28 methods, 10,000 test images, OOD sets of 10,000, 10,000,
1,200, 10,000 and 10,000 images (the balanced comparisons of utils/tables.py), scores with ties (one method's
rounded, as MSP's saturate). Both routes are timed side by side on a few draws (and agree on the same resamples),
then the whole bootstrap (``--resamples``) of utils/bootstrap.py.
"""
import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from utils.bootstrap import SortedComparison, auroc_draws, resample_counts
from utils.tables import comparisons

SETS = {"lsun": 10000, "tiny": 10000, "dtd": 1200, "cifar100": 10000, "pure_color": 10000}


def table(methods: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = {}
    for m in range(methods):
        shift = 0.5 + m / methods
        s = {"test": rng.normal(0, 1, n_test), **{k: rng.normal(shift, 1, n) for k, n in SETS.items()}}
        if m == 0:
            s = {k: np.round(v, 1) for k, v in s.items()}
        scores[f"method {m}"] = {k: v.astype(np.float32) for k, v in s.items()}
    pairs = [c for c in comparisons(n_test, SETS, seed) if c[2] is not None]
    return scores, pairs


def naive(scores, pairs, draws: int, seed: int):
    """Materialise each resample and call sklearn for every method and set; returns the AUROCs and the counts."""
    rng = np.random.default_rng(seed)
    n_test = len(scores["method 0"]["test"])
    out, counts = np.empty((len(scores), len(pairs), draws)), []
    for b in range(draws):
        count = {"test": resample_counts(n_test, 1, rng)[0].astype(int)}
        count.update({name: resample_counts(len(scores["method 0"][name]), 1, rng)[0].astype(int)
                      for name, _, _ in pairs})
        counts.append(count)
        for m, s in enumerate(scores.values()):
            for c, (name, i, o) in enumerate(pairs):
                a = np.repeat(s["test"][i], count["test"][i])
                z = np.repeat(s[name][o], count[name][o])
                out[m, c, b] = 100 * roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(z))], np.r_[a, z])
    return out, counts


def agreement(scores, pairs, slow, counts) -> float:
    """Largest difference between sklearn's AUROCs and utils.bootstrap's on the same resamples."""
    worst = 0.0
    for m, s in enumerate(scores.values()):
        for c, (name, i, o) in enumerate(pairs):
            w_ind = np.stack([k["test"][i] for k in counts]).astype(float)
            w_ood = np.stack([k[name][o] for k in counts]).astype(float)
            fast = SortedComparison(s["test"][i], s[name][o]).auroc(w_ind, w_ood)
            worst = max(worst, float(np.abs(fast - slow[m, c]).max()))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=28, help="methods in the table")
    parser.add_argument("--n-test", type=int, default=10000, help="in-distribution test images")
    parser.add_argument("--resamples", type=int, default=1000, help="draws of the whole bootstrap")
    parser.add_argument("--naive-draws", type=int, default=5, help="draws both routes are timed on side by side")
    args = parser.parse_args()
    scores, pairs = table(args.methods, args.n_test)
    t = time.perf_counter()
    slow, counts = naive(scores, pairs, args.naive_draws, seed=1)
    naive_s = (time.perf_counter() - t) / args.naive_draws
    t = time.perf_counter()
    auroc_draws(scores, pairs, resamples=args.naive_draws)
    fast_s = (time.perf_counter() - t) / args.naive_draws
    t = time.perf_counter()
    auroc_draws(scores, pairs, resamples=args.resamples)
    total = time.perf_counter() - t
    print(f"{args.methods} methods x {len(pairs)} OOD sets, {args.n_test:,} test images")
    print(f"  per draw, side by side on {args.naive_draws} draws: sklearn on materialised resamples {naive_s:.2f} s, "
          f"utils.bootstrap {fast_s:.3f} s (its one sort per method and set included): {naive_s / fast_s:.0f}x")
    print(f"  the whole bootstrap, {args.resamples:,} draws: {total:.1f} s "
          f"(sklearn's route: about {naive_s * args.resamples / 60:.0f} min)")
    print(f"  largest AUROC difference between the two on the same resamples: "
          f"{agreement(scores, pairs, slow, counts):.1e}")


if __name__ == "__main__":
    main()
