"""Paired bootstrap of AUROC: how sure is an order between two methods on the same images?

One draw resamples every set whole, with replacement: the in-distribution test images and each OOD set's
images, each image counted as often as it was drawn. Every method is scored on the same draws (a *paired*
bootstrap), and every comparison weights its own images by their counts in the draw, so the near / far means
of one draw share the same in-distribution resample, as they share the test images. With no resampling
(every count 1) the AUROCs are exactly the tables'.

The AUROC of a draw needs no sorting: each method's in-distribution scores of a comparison are sorted once and
every OOD score's place among them found once (ties included); a draw's AUROC is then the Mann-Whitney
statistic read off the cumulative sum of the in-distribution counts at those places. Draws are processed in
blocks, vectorised over the draws.

A margin is the difference of two methods' AUROCs (or of their near / far means); its 95% interval is the
2.5th and 97.5th percentile of the difference over the draws (the percentile interval; Efron and Tibshirani,
*An Introduction to the Bootstrap*, 1993, ch. 13). An interval that holds 0 is reported as a tie.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

LEVEL = 95.0          # the intervals' confidence, percent
RESAMPLES = 1000      # draws of the default bootstrap
BLOCK = 200           # draws computed at once (memory: BLOCK x images of one comparison)


def resample_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, n)`` counts: how often each of ``n`` images is drawn in each of ``draws`` resamples of size n."""
    picks = rng.integers(0, n, size=(draws, n)) + n * np.arange(draws)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float64)


class SortedComparison:
    """One method's scores of one comparison, sorted once: the in-distribution scores in order, and where each
    OOD score falls among them (the first position not below it, and the first above it)."""

    def __init__(self, ind: np.ndarray, ood: np.ndarray):
        ind, ood = np.asarray(ind, np.float64), np.asarray(ood, np.float64)
        self.order = np.argsort(ind, kind="stable")
        ranked = ind[self.order]
        self.below = np.searchsorted(ranked, ood, side="left")
        self.not_above = np.searchsorted(ranked, ood, side="right")

    def auroc(self, w_ind: np.ndarray, w_ood: np.ndarray) -> np.ndarray:
        """AUROC (percent; larger scores = more OOD) under per-image weights ``w_ind`` ``(draws, n_ind)`` and
        ``w_ood`` ``(draws, n_ood)``: P(OOD score > ID score) + P(tie) / 2 over the weighted pairs (Mann-Whitney)."""
        cum = np.zeros((len(w_ind), len(self.order) + 1))
        np.cumsum(w_ind[:, self.order], axis=1, out=cum[:, 1:])
        # An OOD image beats the ID weight below it and ties with the weight equal to it: (C[lo] + C[hi]) / 2.
        wins = np.einsum("bj,bj->b", w_ood, cum[:, self.below] + cum[:, self.not_above]) / 2
        return 100 * wins / (cum[:, -1] * w_ood.sum(1))


def auroc_draws(scores: Dict[str, Dict[str, np.ndarray]], comparisons: Sequence[Tuple[str, np.ndarray, np.ndarray]],
                resamples: int = RESAMPLES, seed: int = 0, progress: Optional[Callable] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``(point, draws)``: every method's AUROC on every comparison, ``point`` ``(methods, comparisons)`` on the
    images as they are and ``draws`` ``(methods, comparisons, resamples)`` on the paired resamples.

    ``scores[method][set]`` are a method's OOD scores of a whole set (``"test"`` for the in-distribution
    images); each comparison is ``(OOD set, test rows, OOD rows)``, as :func:`utils.tables.comparisons` gives
    them (``combined``, whose OOD rows are None, is left out by the caller).
    """
    methods = list(scores)
    sizes = {"test": len(next(iter(scores.values()))["test"])}
    sizes.update({name: len(scores[methods[0]][name]) for name, _, _ in comparisons})
    sorted_ = [[SortedComparison(scores[m]["test"][i], scores[m][name][o]) for name, i, o in comparisons]
               for m in methods]
    point = np.array([[s.auroc(np.ones((1, len(i))), np.ones((1, len(o))))[0] for s, (_, i, o) in zip(row, comparisons)]
                      for row in sorted_])
    draws = np.empty((len(methods), len(comparisons), resamples))
    rng = np.random.default_rng([seed, 38])
    blocks = range(0, resamples, BLOCK)
    for start in (progress(blocks) if progress else blocks):
        b = min(BLOCK, resamples - start)
        counts = {name: resample_counts(n, b, rng) for name, n in sizes.items()}
        for c, (name, i, o) in enumerate(comparisons):
            w_ind, w_ood = counts["test"][:, i], counts[name][:, o]
            for m in range(len(methods)):
                draws[m, c, start:start + b] = sorted_[m][c].auroc(w_ind, w_ood)
    return point, draws


def bootstrap_table(scores: Dict[str, Dict[str, np.ndarray]],
                    pairs: Sequence[Tuple[str, np.ndarray, Optional[np.ndarray]]], resamples: int = RESAMPLES,
                    seed: int = 0, progress: Optional[Callable] = None) -> "Draws":
    """:class:`Draws` of a table: :func:`auroc_draws` on every OOD set's comparison of ``pairs`` (as
    :func:`utils.tables.comparisons` gives them; ``combined``, whose OOD rows are None, is left out)."""
    sets = [p for p in pairs if p[2] is not None]
    point, draws = auroc_draws(scores, sets, resamples, seed, progress)
    return Draws(list(scores), [p[0] for p in sets], point, draws)


def interval(values: np.ndarray, level: float = LEVEL) -> Tuple[float, float]:
    """The percentile interval of bootstrap ``values`` at ``level`` percent."""
    tail = (100 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def margin_text(value: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    """``+0.12 [-0.03, +0.27]``; empty where there is no margin."""
    return "" if value is None else f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


@dataclass(frozen=True)
class Margin:
    """``a`` minus ``b`` on one column (an OOD set, or a mean of sets): the difference and its interval."""
    a: str
    b: str
    value: float
    low: float
    high: float
    same: bool = False      # the two AUROCs are equal as measured and on every draw (the same ranking of images)

    @property
    def tied(self) -> bool:
        return self.low <= 0 <= self.high

    def text(self) -> str:
        return margin_text(self.value, self.low, self.high)


class Draws:
    """The saved bootstrap of a results table: every method's AUROC per set, as it is and per draw, and the
    columns the tables report (each set, near, far, mean) as averages over sets."""

    def __init__(self, methods: Sequence[str], sets: Sequence[str], point: np.ndarray, draws: np.ndarray):
        self.methods, self.sets = list(methods), list(sets)
        self.point, self.draws = np.asarray(point), np.asarray(draws)
        if self.point.shape != (len(self.methods), len(self.sets)) or self.draws.shape[:2] != self.point.shape:
            raise ValueError(f"bootstrap arrays {self.point.shape} / {self.draws.shape} do not match "
                             f"{len(self.methods)} methods x {len(self.sets)} sets")

    def save(self, path) -> None:
        """Arrays only (names as fixed-width text): loading never runs code."""
        np.savez(path, methods=np.array(self.methods), sets=np.array(self.sets), point=self.point,
                 draws=self.draws.astype(np.float32))

    @classmethod
    def load(cls, path) -> "Draws":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["methods"].tolist(), z["sets"].tolist(), z["point"], z["draws"])

    def columns(self, near: Sequence[str]) -> Dict[str, List[str]]:
        """The sets each column averages: each set alone, then near, far and mean (near / far only if present)."""
        out = {s: [s] for s in self.sets}
        near_sets = [s for s in self.sets if s in near]
        far_sets = [s for s in self.sets if s not in near]
        if near_sets:
            out["near"] = near_sets
        if far_sets:
            out["far"] = far_sets
        out["mean"] = list(self.sets)
        return out

    def column(self, method: str, sets: Sequence[str]) -> Tuple[float, np.ndarray]:
        """A method's AUROC averaged over ``sets``: the value as it is, and per draw."""
        m, idx = self.methods.index(method), [self.sets.index(s) for s in sets]
        return float(self.point[m, idx].mean()), self.draws[m, idx].mean(0)

    def margin(self, a: str, b: str, sets: Sequence[str], level: float = LEVEL) -> Margin:
        """``a`` minus ``b`` averaged over ``sets``, with its paired percentile interval."""
        va, da = self.column(a, sets)
        vb, db = self.column(b, sets)
        return Margin(a, b, va - vb, *interval(da - db, level), same=va == vb and bool(np.all(da == db)))


def rank_column(draws: Draws, sets: Sequence[str], candidates: Sequence[str], is_rival: Callable[[str], bool],
                level: float = LEVEL) -> Dict:
    """The order at the top of one column: the first method (largest AUROC) and the methods whose AUROCs equal its
    own on every draw (``same``: they rank the images alike, e.g. a validated base that chose the first's base),
    its margin over the runner-up (the best of the others) and over the best method of the other kind
    (``contrast``: the best rival, the methods that are not layer-adaptive by ``is_rival``, when a layer-adaptive
    method is first; the best layer-adaptive method when a rival is), each with its interval, and the methods tied
    with it (a difference whose interval holds 0)."""
    value = {m: draws.column(m, sets)[0] for m in candidates}
    ranked = sorted(candidates, key=lambda m: -value[m])
    first = ranked[0]
    margins = {m: draws.margin(first, m, sets, level) for m in ranked[1:]}
    same = [m for m in ranked[1:] if margins[m].same]
    others = [m for m in ranked[1:] if not margins[m].same]
    contrast = [m for m in others if is_rival(m) != is_rival(first)]
    return {"first": first, "auroc": value[first], "same": same, "first is a rival": is_rival(first),
            "tied": [m for m in others if margins[m].tied],
            "runner-up": others[0] if others else None,
            "margin": margins[others[0]] if others else None,
            "contrast": contrast[0] if contrast else None,
            "contrast margin": margins[contrast[0]] if contrast else None}


def shortfalls(draws: Draws, method: str, candidates: Sequence[str], level: float = LEVEL) -> Dict[str, Margin]:
    """Per set: how far ``method`` is under that set's best method among ``candidates`` (best minus method, with
    its interval; 0 where ``method`` is the best)."""
    out = {}
    for s in draws.sets:
        best = max(candidates, key=lambda m: draws.column(m, [s])[0])
        out[s] = draws.margin(best, method, [s], level)
    return out
