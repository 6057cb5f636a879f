"""``ocsvm``: libsvm's exact RBF One-Class SVM, as the original, with gamma chosen by SAS. Its fit grows about as
n^2; :class:`KernelOneClassSVM` keeps what scoring needs (support vectors, dual coefficients, gamma, offset)."""
import math
from typing import Dict, Sequence, Tuple

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.pipeline import Pipeline
from sklearn.svm import OneClassSVM

from .registry import DetectorKind, fit_scaler, register_detector
from .sas import GAMMAS, NU, select_gamma, selection_sample


class KernelOneClassSVM(OutlierMixin, BaseEstimator):
    """An RBF One-Class SVM fitted by libsvm (scikit-learn's ``OneClassSVM``) and kept as arrays:
    ``decision_function(z) = sum_j alpha_j exp(-gamma ||z - s_j||^2) - offset``, computed in float64 with
    matrix products in chunks (equal to libsvm's to about 1e-12, and faster than its per-point loop)."""

    ARRAYS = ("support_vectors_", "dual_coef_")
    SCALARS = ("offset_", "n_features_in_")
    MAX_ELEMENTS = 1 << 24   # kernel entries per chunk

    def __init__(self, gamma: float = 0.01, nu: float = NU, cache_size: float = 1000):
        self.gamma, self.nu, self.cache_size = gamma, nu, cache_size

    def fit(self, Z, y=None) -> "KernelOneClassSVM":
        svm = OneClassSVM(kernel="rbf", gamma=self.gamma, nu=self.nu, cache_size=self.cache_size).fit(Z)
        self.support_vectors_ = svm.support_vectors_
        self.dual_coef_ = svm.dual_coef_.ravel()
        self.offset_ = float(svm.offset_[0])
        self.n_features_in_ = int(svm.n_features_in_)
        return self

    def score_samples(self, Z) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        sv = np.asarray(self.support_vectors_, dtype=np.float64)
        sv_sq = (sv * sv).sum(1)
        step = max(1, self.MAX_ELEMENTS // max(len(sv), 1))
        out = np.empty(len(Z))
        for s in range(0, len(Z), step):
            z = Z[s:s + step]
            d2 = (z * z).sum(1, keepdims=True) - 2 * z @ sv.T + sv_sq
            out[s:s + step] = np.exp(-self.gamma * d2) @ self.dual_coef_
        return out

    def decision_function(self, Z) -> np.ndarray:
        return self.score_samples(Z) - self.offset_

    def predict(self, Z) -> np.ndarray:
        return np.where(self.decision_function(Z) > 0, 1, -1)


def fit_svm(Z: np.ndarray, gamma: float, nu: float, cache_size: float = 1000) -> OneClassSVM:
    return OneClassSVM(kernel="rbf", gamma=gamma, nu=nu, cache_size=cache_size).fit(Z)


@register_detector
class ExactOCSVM(DetectorKind):
    name = "ocsvm"
    params = ("gammas", "nu", "select_size", "prune")
    estimator = KernelOneClassSVM
    help = "exact RBF One-Class SVM (libsvm), gamma by SAS, as the original"

    def fit(self, X, seed: int = 0, gammas: Sequence[float] = GAMMAS, nu: float = NU, select_size=None,
            prune: bool = True, cache_size: float = 1000, **_) -> Tuple[Pipeline, Dict]:
        X, scaler = fit_scaler(X)
        sel = selection_sample(X, scaler, select_size, seed)
        record = select_gamma(sel, gammas, nu, seed, prune, self.name, cache_size=cache_size)
        Z = sel if len(sel) == len(X) else scaler.transform(X)
        est = KernelOneClassSVM(record["gamma"], record["nu"], cache_size).fit(Z)
        record["support_vectors"] = int(len(est.support_vectors_))
        return Pipeline([("scale", scaler), (self.name, est)]), record

    def gamma_errors(self, fit_part, val_part, outliers, gammas, nu: float = NU, seed: int = 0, prune: bool = True,
                     cache_size: float = 1000, **_) -> Dict[float, float]:
        """For each gamma, in increasing order, ``0.5 * accepted pseudo-outliers + 0.5 * rejected pseudo-inliers``
        under libsvm fitted on ``fit_part``. With ``prune`` the search stops once half the rejection rate of the
        inliers alone reaches the best error so far: that rate grows with gamma (the boundary tightens around the
        training points), so no larger gamma can do better; those are also the slowest fits."""
        errors, best = {}, math.inf
        for gamma in sorted(gammas):
            svm = fit_svm(fit_part, gamma, nu, cache_size)
            accepted = float((svm.predict(outliers) == 1).mean()) if len(outliers) else 0.0
            rejected = float((svm.predict(val_part) == -1).mean())
            errors[gamma] = 0.5 * accepted + 0.5 * rejected
            best = min(best, errors[gamma])
            if prune and 0.5 * rejected >= best:
                break
        return errors
