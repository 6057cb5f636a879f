"""Where the approximate detector's AUROC gap comes from: gamma, the fit, or both; and whether an exact solver on a
working set closes the fit part faster than libsvm.

    python -m benchmarks.approx_gap --checkpoint ../shared/checkpoints/vgg16-cifar10.pt --exact logs/vgg16_exact.json

On all train features of the run, every layer, LA-OOD's AUROC (the maximum over layers; balanced comparisons of
the seed) for:

- **exact**: SAS on all points, libsvm on all points (the reference; ``--exact`` reuses an earlier run's JSON from
  ``benchmarks.approx_gamma_rule --out``);
- **approximate (default)**: ``ocsvm-approx`` as it is (gamma by SAS on a 10,000 subsample, size-corrected;
  Nystroem + averaged SGD);
- **libsvm at the approximation's gammas**: the gamma part alone (the exact fit, the approximation's gammas);
- **Nystroem at the exact gammas**: the fit part alone (the approximation's fit, the exact gammas);
- **working set at the exact gammas**: libsvm on a working set instead of all points, which gives the exact
  solution when it stops (below): how close and how fast an exact fit at a given gamma can be.

The working set: the One-Class SVM dual restricted to rows S with nu' = nu n / |S| is the full dual with every
other alpha at 0 (the bound and the sum nu n are the same), so libsvm's solution on S is the full solution exactly
when every row outside S meets its KKT condition, a decision value >= -tol (libsvm's own tolerance). Start from a
seeded 10,000 rows; each round fits S, scores every row against the support vectors with matrix products, and
sets S to the support vectors, the rows of S with a decision value below 5% of the largest, and the violators;
it stops when there are none.

The final fits are timed one layer at a time in one process, ``--jobs`` layers in parallel (the same for every
column); the approximate default's time includes its gamma search, the others are fits at a given gamma.
"""
import time

import numpy as np
from joblib import Parallel, delayed
from sklearn.pipeline import Pipeline
from sklearn.svm import OneClassSVM
from threadpoolctl import threadpool_limits

from benchmarks import approx_gamma_rule as gamma_rule
from benchmarks.approx_gamma_rule import _at_gamma, _fit_approx
from benchmarks.detector_speed import find_run, la_auroc
from utils.detectors.ocsvm import KernelOneClassSVM
from utils.detectors.registry import streamed_scaler
from utils.detectors.sas import NU


def working_set_fit(Z: np.ndarray, gamma: float, nu: float = NU, start: int = 10_000, seed: int = 0,
                    tol: float = 1e-3, band: float = 0.05, max_rounds: int = 30):
    """The exact RBF One-Class SVM on ``Z`` by libsvm on a working set (module docstring): a
    :class:`KernelOneClassSVM` and the rounds it took."""
    n = len(Z)
    S = np.sort(np.random.default_rng(seed).choice(n, min(start, n), replace=False))
    est = KernelOneClassSVM(gamma, nu)
    for rounds in range(1, max_rounds + 1):
        svm = OneClassSVM(kernel="rbf", gamma=gamma, nu=min(1.0, nu * n / len(S)), cache_size=1000).fit(Z[S])
        est.support_vectors_, est.dual_coef_ = svm.support_vectors_, svm.dual_coef_.ravel()
        est.offset_, est.n_features_in_ = float(svm.offset_[0]), Z.shape[1]
        f = est.decision_function(Z)
        in_s = np.zeros(n, bool)
        in_s[S] = True
        violators = ~in_s & (f < -tol)
        if not violators.any():
            return est, rounds
        support = np.zeros(n, bool)
        support[S[svm.support_]] = True
        S = np.flatnonzero(support | (in_s & (f < band * np.abs(f).max())) | violators)
    raise RuntimeError(f"the working set did not settle in {max_rounds} rounds")


def _libsvm(X, gamma, seed):
    scaler = streamed_scaler(X)
    with threadpool_limits(1):
        est = KernelOneClassSVM(gamma).fit(scaler.transform(np.asarray(X)))
    return Pipeline([("scale", scaler), ("ocsvm", est)]), {"gamma": gamma}


def _working_set(X, gamma, seed):
    scaler = streamed_scaler(X)
    with threadpool_limits(1):
        est, rounds = working_set_fit(scaler.transform(np.asarray(X)), gamma, seed=seed)
    return Pipeline([("scale", scaler), ("ocsvm", est)]), {"gamma": gamma, "rounds": rounds,
                                                             "support_vectors": len(est.support_vectors_)}


def _timed(fit, layers, gammas, jobs):
    start = time.perf_counter()
    out = Parallel(n_jobs=jobs)(delayed(fit)(X, g) for X, g in zip(layers, gammas))
    return time.perf_counter() - start, [o[0] for o in out], [o[1] for o in out]


def get_args_parser():
    p = gamma_rule.get_args_parser()      # the same flags: --checkpoint, --runs-root, --ind, --seed, --jobs, --exact, --out
    p.description = __doc__.splitlines()[0]
    return p


def main(args):
    run, train, test, oods = find_run(args.checkpoint, args.runs_root, args.ind)
    layers = list(train["layers"])
    print(f"features: {run}; {len(layers[0])} train features, {len(layers)} layers; OOD sets: {', '.join(oods)}\n")
    exact = gamma_rule.exact_reference(args, layers, test, oods)
    columns = {"exact": exact}
    seconds, dets, records = _timed(lambda X, g: _fit_approx(X, args.seed), layers, [None] * len(layers), args.jobs)
    approx_gammas = [float(r["gamma"]) for r in records]
    columns["approximate (default)"] = {"seconds": seconds, "gammas": approx_gammas,
                                        "auroc": la_auroc(dets, test, oods, args.seed)}
    fits = {"libsvm at the approximation's gammas": (_libsvm, approx_gammas),
            "Nystroem at the exact gammas": (lambda X, g, s=args.seed: _at_gamma(X, g, s), exact["gammas"]),
            "libsvm at the exact gammas": (_libsvm, exact["gammas"]),
            "working set at the exact gammas": (_working_set, exact["gammas"])}
    for name, (fit, gammas) in fits.items():
        seconds, dets, records = _timed(lambda X, g, fit=fit: fit(X, g, args.seed), layers, gammas, args.jobs)
        columns[name] = {"seconds": seconds, "gammas": gammas, "records": records, "detectors": dets,
                         "auroc": la_auroc(dets, test, oods, args.seed, device="cpu")}
        print(f"{name}: {seconds:.0f} s", flush=True)
    gamma_rule.print_against_exact(columns, oods, len(layers), "seconds (the first two: gamma search and fit; the "
                                   "others: the fit at a given gamma)")
    ws = columns["working set at the exact gammas"]
    print(f"\nworking set: rounds per layer {[r['rounds'] for r in ws['records']]}, "
          f"support vectors {[r['support_vectors'] for r in ws['records']]}")
    gaps = []
    for i, X in enumerate(test["layers"]):
        a = columns["libsvm at the exact gammas"]["detectors"][i].decision_function(np.asarray(X))
        b = ws["detectors"][i].decision_function(np.asarray(X))
        gaps.append(float(np.abs(a - b).max() / np.ptp(a)))
    print(f"working set against libsvm on the test images: largest decision difference per layer, as a fraction "
          f"of libsvm's range: {max(gaps):.1e} (layers: {', '.join(f'{g:.0e}' for g in gaps)})")
    for v in columns.values():
        v.pop("detectors", None)
    return columns


if __name__ == "__main__":
    main(get_args_parser().parse_args())
