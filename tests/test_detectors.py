"""Detectors on small synthetic data with known answers."""
import json
import pickle

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from utils.detectors import (LAOOD, Calibration, DetectorFileError, DetectorKind, early_exit, exit_cost, fit_layer,
                             get_detector, list_detectors, load_detector, ood_score, sas_k, save_detector, select_gamma,
                             shift_data)
from utils.detectors.registry import _KINDS, register_detector
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
        save_detector(tmp_path / f"{kind}.npz", det, kind)
        again = load_detector(tmp_path / f"{kind}.npz")
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


def test_saved_detectors_score_as_scikit_learn_fitted_them():
    """The arrays a detector keeps give scikit-learn's own decision values: the One-Class SVM's to 1e-9 and the
    Isolation Forest's to rounding (the same trees walked the same way, path lengths summed in another order)."""
    rng = np.random.default_rng(1)
    X, test = rng.normal(size=(600, 6)), rng.normal(size=(300, 6)) * 1.5
    svm_pipe, rec = fit_layer(X, "ocsvm", gammas=(0.05, 0.2))
    Z, Zt = svm_pipe[0].transform(X), svm_pipe[0].transform(test)
    ref = OneClassSVM(gamma=rec["gamma"], nu=rec["nu"]).fit(Z)
    np.testing.assert_allclose(svm_pipe[-1].decision_function(Zt), ref.decision_function(Zt), rtol=0, atol=1e-9)
    assert rec["support_vectors"] == len(ref.support_)
    forest_pipe, _ = fit_layer(X, "iforest", seed=3)
    ref = IsolationForest(random_state=3, n_jobs=1).fit(forest_pipe[0].transform(X))
    Zt = forest_pipe[0].transform(test)
    np.testing.assert_allclose(forest_pipe[-1].score_samples(Zt), ref.score_samples(Zt), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(forest_pipe[-1].predict(Zt), ref.predict(Zt))


class _Payload:
    def __reduce__(self):   # unpickling this would create the marker file
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(MARKER[0]),))


MARKER = [""]


def test_a_tampered_detector_file_is_refused_and_runs_nothing(tmp_path):
    """A detector file replaced by a pickle that would create a file when unpickled (as joblib.load would have done)
    is refused with a message naming the file and how to rebuild it, and the code never runs; so are a truncated
    file, an object array smuggled into a valid file, and a header naming an unknown field."""
    MARKER[0] = str(tmp_path / "pwned")
    pipe, _ = fit_layer(np.random.default_rng(0).normal(size=(300, 4)), "ocsvm", gammas=(0.1,))
    good = tmp_path / "layer_000.npz"
    save_detector(good, pipe, "ocsvm")
    evil = tmp_path / "evil.npz"
    evil.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(DetectorFileError, match=r"evil\.npz.*rebuild the detectors with"):
        load_detector(evil)
    assert not (tmp_path / "pwned").exists()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DetectorFileError, match="truncated.npz"):
        load_detector(truncated)
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    objects = dict(arrays, **{"est.dual_coef_": np.array([_Payload()], dtype=object)})
    np.savez(tmp_path / "objects.npz", **objects)
    with pytest.raises(DetectorFileError, match="objects.npz"):
        load_detector(tmp_path / "objects.npz")
    assert not (tmp_path / "pwned").exists()
    header = json.loads(str(arrays["header"]))
    header["scalars"]["__class__"] = "os.system"
    np.savez(tmp_path / "header.npz", **dict(arrays, header=np.array(json.dumps(header))))
    with pytest.raises(DetectorFileError, match="unexpected field"):
        load_detector(tmp_path / "header.npz")
    with pytest.raises(DetectorFileError, match="missing"):
        load_detector(tmp_path / "absent.npz")


def test_a_new_detector_kind_is_one_registered_class(tmp_path):
    """What docs/methods.md shows: a kind registers itself, is fitted through LAOOD, saved and loaded by name."""
    from sklearn.base import BaseEstimator, OutlierMixin
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    class Distance(OutlierMixin, BaseEstimator):
        ARRAYS, SCALARS = ("center_",), ("offset_",)

        def __init__(self, quantile: float = 0.99):
            self.quantile = quantile

        def fit(self, Z):
            self.center_ = Z.mean(0)
            self.offset_ = float(np.quantile(-np.linalg.norm(Z - self.center_, axis=1), 1 - self.quantile))
            return self

        def decision_function(self, Z):
            return -np.linalg.norm(Z - self.center_, axis=1) - self.offset_

    try:
        @register_detector
        class DistanceKind(DetectorKind):
            name, estimator, help = "distance", Distance, "distance to the mean"

            def fit(self, X, seed=0, **_):
                scaler = StandardScaler().fit(X)
                return Pipeline([("scale", scaler), (self.name, Distance().fit(scaler.transform(X)))]), {}

        assert "distance" in list_detectors() and get_detector("distance").help
        rng = np.random.default_rng(0)
        la = LAOOD(detector="distance").fit([rng.normal(size=(200, 3)), rng.normal(size=(200, 5))], progress=False)
        assert la.tag == "distance-seed0" and la.settings()["detector"] == "distance"
        save_detector(tmp_path / "d.npz", la.detectors_[0], "distance")
        far = rng.normal(size=(10, 3)) + 10
        np.testing.assert_array_equal(ood_score(load_detector(tmp_path / "d.npz"), far), ood_score(la.detectors_[0], far))
    finally:
        _KINDS.pop("distance", None)


def test_laood_settings_come_from_its_parameters():
    la = LAOOD(detector="ocsvm-approx", n_components=64, calibration_size=100, seed=2, n_jobs=2)
    assert la.get_params()["n_components"] == 64
    assert la.tag == "ocsvm-approx-m64-cal100-seed2"
    s = la.settings()
    assert s["n_components"] == 64 and s["detector_version"] == get_detector("ocsvm-approx").version
    assert "n_jobs" not in s and "cache_size" not in s               # runtime settings change no result
    assert "n_components" not in LAOOD(detector="ocsvm").settings()    # a kind records only what it reads
    assert LAOOD(detector="ocsvm", n_components=64).tag == "ocsvm-seed0"
