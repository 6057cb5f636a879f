"""Detectors on small synthetic data with known answers."""
import joblib
import numpy as np
import pytest

from utils.detectors import LAOOD, Calibration, early_exit, exit_cost, fit_layer, ood_score, sas_k, select_gamma, shift_data
from utils.tables import balanced_indices, layer_table


def test_sas_k():
    assert sas_k(15000) == 21 and sas_k(3000) == 18 and sas_k(100) == 10


def test_shift_on_a_square_marks_only_border_points_and_pushes_them_out():
    # With the strict edge rule (all k neighbours behind the point), edge points of a uniformly filled
    # square lie at its border (a few sit at the rim of a random gap inside), include its corners, and
    # move away from the centre.
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(1500, 2))
    s = shift_data(X, k=10)
    assert s.edge.sum() >= 4
    border_dist = np.minimum(X, 1 - X).min(axis=1)
    assert np.mean(border_dist[s.edge] < 0.06) > 0.9
    for corner in ([0, 0], [0, 1], [1, 0], [1, 1]):
        assert s.edge[np.argmin(np.linalg.norm(X - corner, axis=1))]
    centre = np.array([0.5, 0.5])
    moved_out = np.linalg.norm(s.outliers - centre, axis=1) > np.linalg.norm(X[s.edge] - centre, axis=1)
    assert moved_out.mean() > 0.9
    # l is the mean distance of the edge points to their k+1 nearest points, the first being itself.
    d = np.sort(np.linalg.norm(X[s.edge][:, None] - X[None], axis=2), axis=1)[:, :11]
    assert s.length == pytest.approx(d.mean())


def test_shift_on_a_disk_moves_rim_points_radially():
    rng = np.random.default_rng(0)
    r, theta = np.sqrt(rng.uniform(0, 1, 3000)), rng.uniform(0, 2 * np.pi, 3000)
    disk = np.c_[r * np.cos(theta), r * np.sin(theta)]
    s = shift_data(disk)                         # k = ceil(5 log10 3000) = 18
    assert s.k == 18 and s.edge.sum() > 10
    assert r[s.edge].min() > 0.9                 # edge points sit on the rim
    radii = np.linalg.norm(s.outliers, axis=1)
    assert np.median(radii - r[s.edge]) > 0.5 * s.length   # pushed outwards, roughly by l


def test_selection_picks_the_gamma_that_fits_the_scale():
    # Standard Gaussian in 10-d: a very small gamma accepts everything (pseudo-outliers included), a very
    # large one rejects the held-out inliers; the middle of the grid must win.
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(1500, 10))
    rec = select_gamma(Z, gammas=(1e-4, 0.05, 0.2, 50.0), nu=0.01, prune=False)
    assert rec["gamma"] in (0.05, 0.2)
    assert rec["errors"][50.0] > 0.45                          # every held-out inlier rejected
    assert rec["errors"][1e-4] > rec["error"] + 0.02            # pseudo-outliers accepted
    assert rec["errors"][rec["gamma"]] == min(rec["errors"].values()) == rec["error"]
    pruned = select_gamma(Z, gammas=(1e-4, 0.05, 0.2, 50.0), nu=0.01, prune=True)
    assert pruned["gamma"] == rec["gamma"]
    # A tie goes to the smaller gamma.
    tie = select_gamma(Z, gammas=(1e-6, 1e-5), nu=0.01, prune=False)
    assert tie["gamma"] == 1e-6 or tie["errors"][1e-6] > tie["errors"][1e-5]


def test_layer_detector_scores_far_points_higher_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(800, 5))
    for kind in ("ocsvm", "iforest"):
        det, rec = fit_layer(X, kind, gammas=(0.01, 0.1, 0.5))
        near, far = rng.normal(3.0, 2.0, size=(100, 5)), rng.normal(3.0, 2.0, size=(100, 5)) + 12
        assert ood_score(det, far).min() > np.median(ood_score(det, near))
        joblib.dump(det, tmp_path / f"{kind}.joblib")
        again = joblib.load(tmp_path / f"{kind}.joblib")
        np.testing.assert_array_equal(ood_score(again, far), ood_score(det, far))
        assert rec["n_train"] == 800 and rec["detector"] == kind
    with pytest.raises(ValueError, match="NaN"):
        fit_layer(np.r_[X, [[np.nan] * 5]])
    with pytest.raises(ValueError, match="unknown detector"):
        fit_layer(X, "svdd")


def test_laood_maximum_and_argmax_counts():
    ind = np.array([[0.0, 1.0], [2.0, 0.5], [0.1, 0.2]])
    ood = np.array([[5.0, 1.0], [0.0, 3.0]])
    rows = layer_table(ind, ood)
    assert [r["row"] for r in rows[:2]] == ["layer 1", "layer 2"]
    assert (rows[0]["ind_argmax"], rows[1]["ind_argmax"]) == (1, 2)      # ind: argmax 1, 0, 1
    assert (rows[0]["ood_argmax"], rows[1]["ood_argmax"]) == (1, 1)
    la = rows[-1]
    assert la["row"].startswith("LA-OOD")
    # maxima: ind 1.0, 2.0, 0.2; ood 5.0, 3.0 -> perfectly separated.
    assert la["auroc"] == 100
    assert rows[-2]["row"].startswith("best single layer (oracle")


def test_laood_fit_score_in_parallel_matches_serial():
    rng = np.random.default_rng(1)
    layers = [rng.normal(size=(400, d)) for d in (3, 6, 4)]
    a = LAOOD(gammas=(0.05, 0.2), n_jobs=1).fit(layers, progress=False)
    b = LAOOD(gammas=(0.05, 0.2), n_jobs=2).fit(layers, progress=False)
    test = [rng.normal(size=(50, d)) for d in (3, 6, 4)]
    np.testing.assert_allclose(a.score_layers(test), b.score_layers(test))
    assert [r["layer"] for r in a.records_] == [0, 1, 2]
    assert np.array_equal(a.score(test), a.score_layers(test).max(1))
    with pytest.raises(ValueError, match="2 feature layers given, but 3"):
        a.score_layers(test[:2])


def test_balanced_indices_are_random_not_first():
    i, o = balanced_indices(1000, 300, seed=0)
    assert len(i) == len(o) == 300 and np.array_equal(o, np.arange(300))
    assert not np.array_equal(i, np.arange(300)) and len(set(i)) == 300


def test_calibrated_maximum_standardises_each_layer():
    held_out = np.array([[0.0, 100.0], [2.0, 300.0]])          # layer 2 lives on a 100x larger scale
    cal = Calibration.fit(held_out)
    np.testing.assert_allclose(cal.mean, [1.0, 200.0])
    np.testing.assert_allclose(cal.std, [1.0, 100.0])
    scores = np.array([[4.0, 250.0], [1.0, 600.0]])
    np.testing.assert_allclose(cal.max_z(scores), [3.0, 4.0])  # raw max would pick layer 2 for both


def test_early_exit_bookkeeping():
    cal = Calibration(np.zeros(4), np.ones(4))                  # z = raw score; Phi(z) > 0.99 iff z > 2.326
    scores = np.array([
        [3.0, 3.0, 0.0, 0.0],     # stops at layer 2 (two exceedances in a row)
        [3.0, 0.0, 0.0, 3.0],     # stops at layer 4 (counted cumulatively, not in a row)
        [0.0, 3.0, 3.0, 0.0],     # stops at layer 3
        [3.0, 0.0, 0.0, 0.0],     # one exceedance: never stops, gets the full calibrated score
        [0.0, 0.0, 0.0, 1.0],     # never stops
    ])
    score, stop = early_exit(scores, cal, threshold=0.99, k=2)
    assert stop.tolist() == [1, 3, 2, -1, -1]
    assert score[0] > score[2] > score[1] > score[3] > score[4]  # earlier stops first, then by score
    # MACs: layer i ends at cumulative 10, 20, 60, 100 of 100.
    assert exit_cost(stop, [10, 20, 60, 100], 100) == pytest.approx((0.2 + 1.0 + 0.6 + 1.0 + 1.0) / 5)


def test_tail_excess():
    held_out = np.stack([np.arange(101.0), 10 * np.arange(101.0)], axis=1)   # layer 2 on a 10x scale
    cal = Calibration.fit(held_out, tail_level=0.99)
    z99 = (99.0 - 50.0) / np.arange(101.0).std()
    np.testing.assert_allclose(cal.tail, [z99, z99])              # the 99th percentile of the standardised
    sd = np.arange(101.0).std()
    scores = np.array([
        [50.0, 500.0],                      # typical at both layers: no excess
        [99.0 + 2 * sd, 500.0],             # 2 sd beyond layer 1's tail
        [50.0, 10 * (99.0 + 3 * sd)],       # 3 sd beyond layer 2's tail
        [99.0 + 1 * sd, 10 * (99.0 + 0.5 * sd)],  # the larger of the two excesses counts
    ])
    np.testing.assert_allclose(cal.tail_excess(scores), [0.0, 2.0, 3.0, 1.0], atol=1e-9)
    with pytest.raises(ValueError, match="tail quantiles"):
        Calibration(np.zeros(2), np.ones(2)).tail_excess(scores)
