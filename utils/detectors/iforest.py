"""``iforest``: an Isolation Forest (Liu et al., 2008), fitted by scikit-learn and kept as its trees' arrays."""
from typing import Dict, Tuple

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

from .registry import DetectorKind, average_path_length, fit_scaler, register_detector


class IsolationTrees(OutlierMixin, BaseEstimator):
    """A fitted Isolation Forest as arrays: the nodes of all trees concatenated (children, split feature and
    threshold), each node's path length ``depth + c(node samples)`` for when it is the leaf an input reaches,
    and each tree's root. ``score_samples = -2^(-mean path length / c(max_samples))`` (Liu et al., eq. 2), the
    same numbers as scikit-learn's ``IsolationForest``, whose fit it wraps (inputs compared in float32, as there)."""

    ARRAYS = ("left_", "right_", "feature_", "threshold_", "path_", "roots_")
    SCALARS = ("offset_", "max_samples_", "n_features_in_")

    def __init__(self, n_estimators: int = 100, random_state: int = 0):
        self.n_estimators, self.random_state = n_estimators, random_state

    def fit(self, Z, y=None) -> "IsolationTrees":
        forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=1).fit(Z)
        parts, start = [], 0
        for tree, features in zip(forest.estimators_, forest.estimators_features_):
            t = tree.tree_
            depth = np.zeros(t.node_count, dtype=np.int64)
            for node in range(t.node_count):     # children come after their parent
                for child in (t.children_left[node], t.children_right[node]):
                    if child >= 0:
                        depth[child] = depth[node] + 1
            leaf = t.children_left < 0
            parts.append((np.where(leaf, -1, t.children_left + start), np.where(leaf, -1, t.children_right + start),
                          np.where(leaf, 0, np.asarray(features)[np.maximum(t.feature, 0)]), t.threshold,
                          depth + average_path_length(t.n_node_samples), start))
            start += t.node_count
        self.left_, self.right_, self.feature_, self.threshold_, self.path_ = (
            np.concatenate([p[i] for p in parts]) for i in range(5))
        self.roots_ = np.array([p[5] for p in parts], dtype=np.int64)
        self.offset_ = float(forest.offset_)
        self.max_samples_ = int(forest.max_samples_)
        self.n_features_in_ = int(forest.n_features_in_)
        return self

    def score_samples(self, Z, chunk: int = 4096) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float32)
        denominator = len(self.roots_) * float(average_path_length([self.max_samples_])[0])
        out = np.empty(len(Z))
        for s in range(0, len(Z), chunk):
            z = Z[s:s + chunk]
            rows = np.arange(len(z))[:, None]
            node = np.broadcast_to(self.roots_, (len(z), len(self.roots_))).copy()
            inner = self.left_[node] >= 0
            while inner.any():     # every tree at once, one level per pass
                go_left = z[rows, self.feature_[node]] <= self.threshold_[node]
                node = np.where(inner, np.where(go_left, self.left_[node], self.right_[node]), node)
                inner = self.left_[node] >= 0
            out[s:s + chunk] = -np.power(2.0, -self.path_[node].sum(1) / denominator)
        return out

    def decision_function(self, Z) -> np.ndarray:
        return self.score_samples(Z) - self.offset_

    def predict(self, Z) -> np.ndarray:
        return np.where(self.decision_function(Z) < 0, -1, 1)


@register_detector
class IForest(DetectorKind):
    name = "iforest"
    params = ()
    estimator = IsolationTrees
    help = "Isolation Forest, 100 trees"

    def fit(self, X, seed: int = 0, **_) -> Tuple[Pipeline, Dict]:
        X, scaler = fit_scaler(X)
        return Pipeline([("scale", scaler), (self.name, IsolationTrees(random_state=seed).fit(scaler.transform(X)))]), {}
