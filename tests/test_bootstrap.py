"""The paired bootstrap of AUROC (utils/bootstrap.py) on cases with known answers."""
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from utils.bootstrap import (Draws, SortedComparison, auroc_draws, interval, rank_column, resample_counts,
                             shortfalls)
from utils.metrics import ood_metrics
from utils.tables import comparisons


def _scores(rng, n_test=300, sizes=(("a", 200), ("b", 400))):
    """Two methods on a test split and two OOD sets; method ``y`` is ``x`` plus noise (the two are paired)."""
    x = {"test": rng.normal(0, 1, n_test), **{name: rng.normal(1, 1, n) for name, n in sizes}}
    y = {k: v + rng.normal(0, 1, len(v)) for k, v in x.items()}
    return {"x": x, "y": y}


def _comparisons(scores, seed=0):
    first = next(iter(scores.values()))
    sizes = {k: len(v) for k, v in first.items() if k != "test"}
    return [c for c in comparisons(len(first["test"]), sizes, seed) if c[2] is not None]


def test_resample_counts_are_draws_of_n_with_replacement():
    counts = resample_counts(50, 400, np.random.default_rng(0))
    assert counts.shape == (400, 50)
    assert np.all(counts.sum(1) == 50) and counts.min() >= 0
    assert abs(counts.mean() - 1) < 1e-9 and 0.8 < counts.var() < 1.2     # multinomial(50, 1/50): variance 0.98


def test_every_draw_agrees_with_sklearn_on_the_materialised_resample():
    rng = np.random.default_rng(1)
    ind = np.round(rng.normal(0, 1, 40), 1)           # rounded: ties inside and across the two sides
    ood = np.round(rng.normal(0.7, 1, 30), 1)
    comparison = SortedComparison(ind, ood)
    w_ind, w_ood = resample_counts(40, 50, rng), resample_counts(30, 50, rng)
    fast = comparison.auroc(w_ind, w_ood)
    for b in range(50):
        a = np.repeat(ind, w_ind[b].astype(int))
        o = np.repeat(ood, w_ood[b].astype(int))
        expected = 100 * roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(o))], np.r_[a, o])
        assert fast[b] == pytest.approx(expected, abs=1e-9)


def test_the_point_estimates_are_the_tables_aurocs():
    scores = _scores(np.random.default_rng(2))
    pairs = _comparisons(scores)
    point, draws = auroc_draws(scores, pairs, resamples=20)
    assert draws.shape == (2, 2, 20)
    for m, method in enumerate(scores):
        for c, (name, i, o) in enumerate(pairs):
            assert point[m, c] == pytest.approx(ood_metrics(scores[method]["test"][i], scores[method][name][o])["auroc"])


def test_identical_scores_give_the_interval_zero_zero():
    scores = _scores(np.random.default_rng(3))
    scores["copy"] = {k: v.copy() for k, v in scores["x"].items()}
    pairs = _comparisons(scores)
    point, draws = auroc_draws(scores, pairs, resamples=200)
    d = Draws(list(scores), [p[0] for p in pairs], point, draws)
    for sets in (["a"], ["b"], ["a", "b"]):
        margin = d.margin("x", "copy", sets)
        assert (margin.value, margin.low, margin.high) == (0, 0, 0) and margin.tied and margin.same
    # In a ranking, a method with the same AUROC on every draw is named beside the first, not as its runner-up.
    top = rank_column(d, ["a", "b"], d.methods, is_rival=lambda m: True)
    assert {top["first"], *top["same"]} == {"x", "copy"} and top["runner-up"] == "y"
    assert not d.margin("x", "y", ["a"]).same


def test_a_perfect_separator_is_ahead_of_a_method_that_is_not():
    rng = np.random.default_rng(4)
    scores = _scores(rng)
    scores["perfect"] = {k: (v if k == "test" else v + 100) for k, v in scores["x"].items()}
    pairs = _comparisons(scores)
    point, draws = auroc_draws(scores, pairs, resamples=300)
    d = Draws(list(scores), [p[0] for p in pairs], point, draws)
    assert np.all(d.draws[d.methods.index("perfect")] == 100)
    margin = d.margin("perfect", "x", ["a", "b"])
    assert margin.low > 0 and not margin.tied
    top = rank_column(d, ["a", "b"], d.methods, is_rival=lambda m: m != "perfect")
    assert top["first"] == "perfect" and top["tied"] == [] and top["contrast"] == "x"
    assert top["contrast margin"].low > 0
    # With a rival first, the contrast is the best method of the other kind.
    top = rank_column(d, ["a", "b"], d.methods, is_rival=lambda m: m == "perfect")
    assert top["first is a rival"] and top["contrast"] == top["runner-up"]
    assert all(m.value == 0 for m in shortfalls(d, "perfect", d.methods).values())


def test_two_equal_methods_are_reported_tied():
    rng = np.random.default_rng(5)
    n = 400
    scores = {m: {"test": rng.normal(0, 1, n), "a": rng.normal(1, 1, n)} for m in ("p", "q")}
    pairs = _comparisons(scores)
    point, draws = auroc_draws(scores, pairs, resamples=500)
    d = Draws(list(scores), ["a"], point, draws)
    top = rank_column(d, ["a"], d.methods, is_rival=lambda m: True)
    assert top["tied"] == [top["runner-up"]] and top["margin"].tied


@pytest.mark.slow
def test_the_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Method x: ID N(0, 1), OOD N(d, 1), AUROC Phi(d / sqrt 2); method y adds N(0, s^2) noise to every score,
    AUROC Phi(d / sqrt(2 (1 + s^2))). Over 200 simulated test sets the 95% interval of x - y must cover the true
    difference close to 95% of the time."""
    d, s, n, reps = 1.0, 1.0, 300, 200
    truth = 100 * (norm.cdf(d / np.sqrt(2)) - norm.cdf(d / np.sqrt(2 * (1 + s * s))))
    rng = np.random.default_rng(6)
    covered = 0
    for rep in range(reps):
        x = {"test": rng.normal(0, 1, n), "a": rng.normal(d, 1, n)}
        y = {k: v + rng.normal(0, s, n) for k, v in x.items()}
        pairs = [("a", np.arange(n), np.arange(n))]
        point, draws = auroc_draws({"x": x, "y": y}, pairs, resamples=400, seed=rep)
        lo, hi = interval(draws[0, 0] - draws[1, 0])
        covered += lo <= truth <= hi
    assert 0.89 <= covered / reps <= 0.99
