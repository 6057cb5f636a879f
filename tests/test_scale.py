"""Past one machine: the approximate One-Class SVM, --detector auto, layer fits on a Dask cluster, feature
extraction across torchrun processes, and One-Class SVM scoring with torch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import generate_datasets
import save_inter_outputs
from conftest import CHECKPOINTS, DATA, ROOT, need
from utils.locate import la_ood
from utils.detectors import (AUTO_EXACT_MAX, LAOOD, ApproxOneClassSVM, fit_layer, ood_score,
                             resolve_detector, select_gamma)
from utils.features import load_features
from utils.detectors.torch_scoring import torch_ood_score


def gaussian_task(d=32, n=6000, seed=0):
    """In-distribution: a correlated Gaussian; OOD: the same, wider and shifted."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    train = (rng.normal(size=(n, d)) @ A).astype(np.float32)
    test = rng.normal(size=(1000, d)) @ A
    ood = (rng.normal(size=(1000, d)) * 1.3) @ A + 0.3
    return train, test, ood


def auroc(pipeline, test, ood):
    return roc_auc_score(np.r_[np.zeros(len(test)), np.ones(len(ood))],
                         np.r_[ood_score(pipeline, test), ood_score(pipeline, ood)])


def test_approx_ocsvm_keeps_the_contract_and_the_ranking():
    train, test, ood = gaussian_task()
    exact, exact_rec = fit_layer(train, "ocsvm")
    approx, rec = fit_layer(train, "ocsvm-approx")
    assert isinstance(approx[-1], ApproxOneClassSVM) and rec["gamma"] in rec["errors"]
    assert rec["gamma"] == exact_rec["gamma"]            # 6,000 points: the subsample is all of them
    # The offset sits at the nu quantile of the training scores: about nu of them rejected.
    Z = approx[0].transform(train)
    assert np.mean(approx[-1].predict(Z) == -1) <= 0.005
    assert set(np.unique(approx[-1].predict(Z))) <= {-1, 1}
    assert np.allclose(approx[-1].decision_function(Z), approx[-1].score_samples(Z) - approx[-1].offset_)
    # It ranks OOD like the exact detector (AUROC about 0.95 here).
    assert abs(auroc(approx, test, ood) - auroc(exact, test, ood)) < 0.02
    assert auroc(approx, test, ood) > 0.9


def test_approx_ocsvm_streams_a_memory_map_and_is_seeded(tmp_path):
    train, test, _ = gaussian_task(n=3000)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, train.shape)
    mm[:] = train
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, _ = fit_layer(mm, "ocsvm-approx", gammas=(0.01, 0.05))
    b, _ = fit_layer(train, "ocsvm-approx", gammas=(0.01, 0.05))
    assert np.array_equal(ood_score(a, test), ood_score(b, test))   # same seed, same model
    small = ApproxOneClassSVM(gamma=0.05, chunk_size=500).fit(np.asarray(train, np.float64)[:2000])
    assert small.components_.shape == (512, train.shape[1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad = train.copy()
        bad[5, 3] = np.nan
        fit_layer(bad, "ocsvm-approx")


def test_approx_gamma_is_the_exact_sas_choice_on_a_subsample():
    """Without the size correction, ocsvm-approx takes the gamma the exact detector's SAS picks on a seeded
    subsample of the standardised features, and fits the Nystroem model at it."""
    train, _, _ = gaussian_task(n=3000)
    approx, rec = fit_layer(train, "ocsvm-approx", gammas=(0.001, 0.01, 0.1, 1.0), select_size=1500,
                            size_correction=False)
    sel = approx[0].transform(train[np.random.default_rng(0).choice(len(train), size=1500, replace=False)])
    exact = select_gamma(sel, gammas=(0.001, 0.01, 0.1, 1.0), detector="ocsvm")
    assert rec["gamma"] == exact["gamma"] == approx[-1].gamma and rec["errors"] == exact["errors"]


def test_auto_picks_by_size(tmp_path):
    assert resolve_detector("auto", AUTO_EXACT_MAX)[0] == "ocsvm"
    assert resolve_detector("auto", AUTO_EXACT_MAX + 1)[0] == "ocsvm-approx"
    assert resolve_detector("iforest", 10**7)[0] == "iforest"
    with pytest.raises(ValueError, match="unknown detector"):
        resolve_detector("svm", 10)
    args = type("A", (), dict(gammas=None, detector="auto", nu=0.001, seed=0, select_size=None, prune=True,
                              n_jobs=1, calibration_size=0, dask_scheduler=None, dask_local=None, n_components=512,
                              cache_size=1000))()
    with pytest.raises(FileNotFoundError, match="save_inter_outputs.py first"):
        la_ood(args, "vgg16", tmp_path)


def test_torch_scoring_equals_scikit_learn():
    train, test, ood = gaussian_task(n=3000)
    pipe, _ = fit_layer(train, "ocsvm", gammas=(0.05,))
    X = np.r_[test, ood].astype(np.float32)
    ours = torch_ood_score(pipe, X, "cpu", max_elements=20_000)       # many small batches
    np.testing.assert_allclose(ours, ood_score(pipe, X), rtol=0, atol=1e-9)
    la = LAOOD(gammas=(0.05,)).fit([train, train[:, :8]], progress=False)
    iso = fit_layer(train, "iforest")[0]
    la.detectors_.append(iso)                                           # not an SVM: scored by scikit-learn
    layers = [X, X[:, :8], X]
    np.testing.assert_allclose(la.score_layers(layers, device="cpu"), la.score_layers(layers), atol=1e-9)
    if torch.cuda.is_available():
        np.testing.assert_allclose(torch_ood_score(pipe, X, "cuda"), ood_score(pipe, X), atol=1e-4)


def test_dask_cluster_fits_the_same_detectors():
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is in requirements.txt")
    train, test, ood = gaussian_task(n=1500)
    layers = [train, train[:, :16] * 2, np.abs(train[:, 8:])]
    evaluate = [np.r_[test, ood][:, :32], np.r_[test, ood][:, :16] * 2, np.abs(np.r_[test, ood][:, 8:])]
    local = LAOOD(gammas=(0.01, 0.05, 0.1), n_jobs=2).fit(layers, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = LAOOD(gammas=(0.01, 0.05, 0.1), n_jobs=2, backend="dask").fit(layers, progress=False)
        assert len(client.scheduler_info()["workers"]) == 2
        scored_remote = remote.score_layers(evaluate)
    assert [r["gamma"] for r in remote.records_] == [r["gamma"] for r in local.records_]
    assert np.array_equal(scored_remote, local.score_layers(evaluate))


@pytest.mark.shared
@pytest.mark.slow
def test_torchrun_features_equal_one_process(tmp_path):
    common = ["--source-root", str(need(DATA)), "--data-root", str(tmp_path / "gen"), "--max-train", "300",
              "--max-test", "200", "--max-ood", "150"]
    model = ["--checkpoint", str(need(CHECKPOINTS / "resnet20-cifar10-akamaster.th")), "--model", "resnet20",
             "--batch-size", "64"]
    generate_datasets.main(generate_datasets.get_args_parser().parse_args(common + ["--ood", "dtd"]))
    one = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
        common + model + ["--runs-root", str(tmp_path / "one")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "save_inter_outputs.py", *common, *model,
                           "--runs-root", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / one.relative_to(tmp_path / "one")
    for name in ("train", "test", "dtd"):
        a, b = load_features(one, name), load_features(two, name)
        assert b["manifest"]["processes"] == 2 and b["manifest"]["settings"] == a["manifest"]["settings"]
        for x, y in zip(a["layers"] + [a["logits"], a["penultimate"]], b["layers"] + [b["logits"], b["penultimate"]]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        assert np.array_equal(a["labels"], b["labels"])
    assert not list((tmp_path / "two").rglob("*.partial"))


def test_neighbour_scale_is_the_squared_ratio_of_knn_distances_of_a_subsample():
    """On uniform points in the plane the mean distance to the j-th neighbour grows as sqrt(j / density), so a
    subsample of m of n points is the whole set magnified by r, r^2 = (n / m) (mean_j<=k_s sqrt(j) / mean_j<=k_f
    sqrt(j))^2 with each part's SAS k (edges make it a few percent larger)."""
    from sklearn.preprocessing import StandardScaler

    from utils.detectors.approx import neighbour_scale
    from utils.detectors.sas import sas_k, selection_sample
    rng = np.random.default_rng(0)
    n, m = 20000, 5000
    X = rng.uniform(size=(n, 2))
    scaler = StandardScaler().fit(X)
    sample = selection_sample(X, scaler, m, seed=0)
    k_sub, k_full = sas_k(round(0.3 * m)), sas_k(round(0.3 * n))
    expected = (n / m) * (np.sqrt(np.arange(1, k_sub + 1)).mean() / np.sqrt(np.arange(1, k_full + 1)).mean()) ** 2
    assert neighbour_scale(X, scaler, sample) == pytest.approx(expected, rel=0.06)
    assert neighbour_scale(X, scaler, scaler.transform(X)) == pytest.approx(1.0, abs=1e-6)   # the whole set: 1


def test_size_correction_chooses_on_the_whole_sets_scale():
    """With the correction, the subsample's SAS errors are those of gamma / r^2, and the record gives them under the
    grid's own gammas; the chosen gamma is a grid value."""
    from utils.detectors.approx import ApproxOCSVM
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6000, 8)).astype(np.float32)
    grid = (0.01, 0.025, 0.05, 0.1, 0.25)
    _, plain = ApproxOCSVM().fit(X, gammas=grid, select_size=1500, prune=False, n_components=64,
                                 size_correction=False)
    _, corrected = ApproxOCSVM().fit(X, gammas=grid, select_size=1500, prune=False, n_components=64,
                                     size_correction=True)
    assert 1.2 < corrected["size_scale"] < 1.6 and "size_scale" not in plain   # about (6000 / 1500)^(2 / 8)
    assert corrected["gamma"] in grid and set(corrected["errors"]) == set(grid)
    assert corrected["gamma"] >= plain["gamma"]       # fewer points look sparser: the correction moves gamma up


def test_working_set_fit_is_libsvms_solution_on_all_points():
    """The dual restricted to a working set with nu' = nu n / |S| is the full dual: once no row outside the set
    violates its KKT condition, the decision function is libsvm's on all points (to libsvm's tolerance)."""
    from benchmarks.approx_gap import working_set_fit
    from utils.detectors.ocsvm import KernelOneClassSVM
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal(size=(3000, 8)), rng.normal(3, 0.5, size=(1000, 8))])
    Q = rng.normal(size=(500, 8)) * 1.5
    for gamma in (0.05, 0.5):
        full = KernelOneClassSVM(gamma, nu=0.01).fit(Z)
        ws, rounds = working_set_fit(Z, gamma, nu=0.01, start=800)
        assert rounds > 1                     # the first working set was not enough: violators were added
        a, b = full.decision_function(Q), ws.decision_function(Q)
        assert np.abs(a - b).max() < 5e-3 * np.ptp(a)
        assert (np.sign(a) == np.sign(b)).mean() > 0.99
