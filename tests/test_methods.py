"""Scoring methods on constructed cases with known answers, and the registry's contract."""
import numpy as np
import pytest
import torch

from utils import methods
from utils.detectors import Calibration
from utils.gram import deviations, gram_statistics
from utils.methods import (HELD, KNN, Inputs, Mahalanobis, ViM, ash_s, dice_weight, energy, gen, get_method,
                           list_methods, msp, react_threshold, register_method, score_methods, vim_dim)


def _inputs(train_pen, sets_pen, head=None, **kw):
    """Inputs from penultimate features, with logits through ``head`` (identity when None)."""
    head = head or (np.eye(train_pen.shape[1]), np.zeros(train_pen.shape[1]))
    feats = lambda pen: {"penultimate": pen, "logits": methods.linear(pen, head),  # noqa: E731
                         "labels": np.zeros(len(pen), int), "layers": [pen]}
    return Inputs(train=feats(train_pen), sets={n: feats(p) for n, p in sets_pen.items()}, head=head, **kw)


def test_msp_and_energy_on_fixed_logits():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [10.0, -10.0]])
    np.testing.assert_allclose(msp(logits), [-0.5, -0.75, -1 / (1 + np.exp(-20))])
    np.testing.assert_allclose(energy(logits), [-np.log(2), -np.log(4), -np.logaddexp(10, -10)])
    np.testing.assert_allclose(energy(logits, temperature=2.0), -2 * np.logaddexp(logits[:, 0] / 2, logits[:, 1] / 2))


def test_gen_is_largest_for_flat_predictions():
    flat = np.zeros((1, 10))
    expected = 10 * (0.1 ** 0.1 * 0.9 ** 0.1)                     # ten classes at p = 0.1 each
    np.testing.assert_allclose(gen(flat, 0.1, 10), [expected])
    peaked = np.array([[20.0] + [0.0] * 9])
    assert gen(peaked)[0] < gen(np.array([[2.0] + [0.0] * 9]))[0] < expected
    # M = 2 keeps only the two largest probabilities.
    np.testing.assert_allclose(gen(flat, 0.1, 2), [2 * (0.1 ** 0.1 * 0.9 ** 0.1)])


def test_react_clips_at_the_train_percentile():
    train = np.arange(1.0, 101.0).reshape(50, 2)                  # activations 1..100
    assert react_threshold(train, 90) == pytest.approx(90.1)     # numpy's linear percentile
    scores = get_method("ReAct").fn(_inputs(train, {"test": np.array([[1000.0, 0.0], [5.0, 0.0]])}))["test"]
    np.testing.assert_allclose(scores, [-np.logaddexp(90.1, 0.0), -np.logaddexp(5.0, 0.0)])


def test_ash_s_keeps_the_top_decile_and_sharpens():
    x = np.arange(1.0, 11.0)[None]                                # sum 55; the top 10% is the single 10
    out = ash_s(x, 90)
    np.testing.assert_allclose(out, [[0.0] * 9 + [10 * np.exp(5.5)]])
    x2 = np.array([[4.0, 3.0, 2.0, 1.0] * 5])                     # 20 values: keep the top 2 (both 4s)
    kept = ash_s(x2, 90)
    assert (kept > 0).sum() == 2 and np.allclose(kept[kept > 0], 4 * np.exp(50 / 8))


def test_dice_keeps_the_largest_contributions():
    train = np.array([[1.0, 2.0, 10.0], [1.0, 2.0, 10.0]])        # mean activation (1, 2, 10)
    weight = np.array([[1.0, 1.0, 1.0], [3.0, -1.0, 0.5]])        # contributions (1, 2, 10), (3, -2, 5)
    kept = dice_weight(train, (weight, np.zeros(2)), p=50)        # median of the six contributions: 2.5
    np.testing.assert_array_equal(kept, [[0.0, 0.0, 1.0], [3.0, 0.0, 0.5]])


def test_vim_subspace_rule_and_residual():
    assert [vim_dim(d) for d in (2048, 1500, 1024, 768, 512, 342)] == [1000, 1000, 512, 512, 256, 171]
    rng = np.random.default_rng(0)
    # Train features vary in the first two of four coordinates only; the head's origin u is 0 (no bias).
    train = np.c_[rng.normal(0, 3, (500, 2)), rng.normal(0, 0.1, (500, 2))]
    head = (np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), np.zeros(2))
    vim = ViM(head).fit(train)
    assert vim.dim_ == 2
    q = np.array([[1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])    # in the subspace / 5 off it
    np.testing.assert_allclose(vim._residual_norm(q), [0.0, 5.0], atol=0.05)
    alpha = train[:, :2].max(1).mean() / vim._residual_norm(train).mean()   # mean max-logit / mean residual
    assert vim.alpha_ == pytest.approx(alpha)
    np.testing.assert_allclose(vim.score(q), alpha * vim._residual_norm(q) + energy(q[:, :2]))
    assert vim.score(q)[1] > vim.score(q)[0]


def test_mahalanobis_on_gaussians():
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 0.0], [0.0, 0.25]])
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    y = rng.integers(0, 2, 20000)
    X = means[y] + rng.multivariate_normal([0, 0], cov, 20000)
    m = Mahalanobis().fit(X, y)
    np.testing.assert_allclose(m.means_, means, atol=0.05)
    q = np.array([[0.0, 1.0], [2.0, 0.0], [10.0, 0.5]])            # dx^2 / 4 + dy^2 / 0.25 to the nearest mean
    np.testing.assert_allclose(m.score(q), [4.0, 1.0, 1.0], rtol=0.03)


def test_mahalanobis_all_layers_standardises_each_layer_on_held_back_images():
    rng = np.random.default_rng(1)
    n = 2000
    layer_a, layer_b = rng.normal(0, 1, (n, 3)), rng.normal(0, 100, (n, 3))   # very different scales
    train = {"layers": [layer_a, layer_b], "labels": np.zeros(n, int), "logits": np.zeros((n, 2))}
    held = np.sort(rng.choice(n, 200, replace=False))
    kept = np.setdiff1d(np.arange(n), held)
    q_a, q_b = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    inp = Inputs(train=train, sets={"test": {"layers": [q_a, q_b]}},
                 calibration=Calibration(np.zeros(2), np.ones(2), np.zeros(2), held))
    got = get_method("Mahalanobis (all layers)").fn(inp)["test"]
    expected = 0.0
    for X, q in ((layer_a, q_a), (layer_b, q_b)):
        m = Mahalanobis().fit(X[kept], np.zeros(len(kept), int))
        ref = m.score(X[held])
        expected = expected + (m.score(q) - ref.mean()) / ref.std()
    np.testing.assert_allclose(got, expected)
    assert got[1] - got[0] > 10       # 6 sd out in the small-scale layer dominates, whatever the raw scales


def test_knn_backends_agree_and_match_a_known_chord():
    angles = np.deg2rad(np.arange(10.0))
    train = np.c_[np.cos(angles), np.sin(angles)] * np.arange(1, 11)[:, None]   # lengths do not matter
    expected = 2 * np.sin(np.deg2rad(2.0) / 2)                                 # 3rd neighbour of 0 degrees
    for backend in ("torch", "faiss"):
        np.testing.assert_allclose(KNN(k=3, backend=backend).fit(train).score(np.array([[5.0, 0.0]])), [expected],
                                   rtol=1e-3)
    rng = np.random.default_rng(0)
    big, q = rng.normal(size=(3000, 64)), rng.normal(size=(500, 64))
    np.testing.assert_allclose(KNN(50, "faiss").fit(big).score(q), KNN(50, "torch").fit(big).score(q), rtol=1e-5)


def test_tail_rule_over_a_base_score():
    """LA-OOD tail + X = X standardised on the held-back images + the largest layer excess over its tail."""
    held_scores = np.stack([np.arange(101.0), 10 * np.arange(101.0)], axis=1)
    cal = Calibration.fit(held_scores, tail_level=0.99, held=np.arange(0, 20))
    sd = np.arange(101.0).std()
    layer_scores = np.array([[50.0, 500.0], [99.0 + 2 * sd, 500.0], [50.0, 10 * (99.0 + 3 * sd)]])
    np.testing.assert_allclose(cal.tail_excess(layer_scores), [0.0, 2.0, 3.0], atol=1e-9)
    rng = np.random.default_rng(0)
    train_logits = rng.normal(size=(100, 3))
    test_logits = rng.normal(size=(3, 3))
    inp = Inputs(train={"logits": train_logits, "penultimate": train_logits, "labels": np.zeros(100, int)},
                 sets={"test": {"logits": test_logits}}, layer_scores={"test": layer_scores}, calibration=cal)
    ref = energy(train_logits[:20])
    expected = (energy(test_logits) - ref.mean()) / ref.std() + [0.0, 2.0, 3.0]
    np.testing.assert_allclose(get_method("LA-OOD tail + Energy").fn(inp)["test"], expected)


def test_registry_skips_methods_whose_inputs_are_missing(caplog):
    pen = np.random.default_rng(0).normal(size=(50, 4))
    inp = _inputs(pen, {"test": pen[:5]})
    with caplog.at_level("INFO", logger="utils.methods"):
        out = score_methods(["Energy", "ODIN", "LA-OOD tail + Energy"], inp)
    assert list(out) == ["Energy"]
    assert "ODIN left out: it needs odin" in caplog.text and "save_inter_outputs.py --odin" in caplog.text
    assert "LA-OOD tail + Energy left out: it needs calibration, detectors" in caplog.text


def test_adding_a_method_is_one_entry():
    try:
        @register_method("max logit", ["logits"], "Hendrycks et al., ICML 2022")
        def _max_logit(inp):
            return inp.each(lambda f: -np.asarray(f["logits"]).max(1))

        assert "max logit" in list_methods()
        pen = np.array([[1.0, 5.0], [3.0, 0.0]])
        np.testing.assert_allclose(score_methods(["max logit"], _inputs(pen, {"test": pen}))["max logit"]["test"],
                                   [-5.0, -3.0])
        with pytest.raises(ValueError, match="already registered"):
            register_method("max logit", ["logits"])(_max_logit)
    finally:
        methods._METHODS.pop("max logit", None)
    with pytest.raises(ValueError, match="unknown needs"):
        register_method("x", ["pixels"])
    with pytest.raises(ValueError, match="unknown scoring method"):
        get_method("nope")


def test_held_split_without_calibration_is_seeded_and_disjoint():
    inp = Inputs(train={"logits": np.zeros((1000, 2))}, sets={}, seed=3)
    held, kept = inp.held_split()
    assert len(held) == 100 and len(np.intersect1d(held, kept)) == 0 and len(held) + len(kept) == 1000
    assert np.array_equal(held, Inputs(train={"logits": np.zeros((1000, 2))}, sets={}, seed=3).held_split()[0])
    sub = inp.fitted_on(kept, held)
    assert len(sub.train["logits"]) == 900 and len(sub.sets[HELD]["logits"]) == 100


def test_gram_statistics_and_deviations_by_hand():
    fmap = torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])          # (1, C=2, 1, 2): channels (1, 1) and (2, 0)
    g = gram_statistics(fmap, poles=(1, 2))
    # p = 1: F F' = [[2, 2], [2, 4]], row sums (4, 6); p = 2: F^2 F^2' = [[2, 4], [4, 16]], roots of (6, 20).
    np.testing.assert_allclose(g[0].numpy(), [[4.0, 6.0], [np.sqrt(6.0), np.sqrt(20.0)]])
    lo = np.array([[[5.0, 5.0], [1.0, 1.0]]])                     # class 0, (P, C)
    hi = np.array([[[8.0, 5.5], [3.0, 5.0]]])
    d = deviations([g], [lo], [hi], np.array([0]))
    # Below 5 by 1 (relative 1/5), above 5.5 by 0.5 (0.5/5.5), sqrt(20) inside [1, 5], sqrt(6) inside [1, 3].
    np.testing.assert_allclose(d, [[1 / 5 + 0.5 / 5.5]], rtol=1e-6)


def test_gram_matches_pytorch_ood_statistics():
    import pytorch_ood.detector as pood
    fmap = torch.rand(3, 4, 5, 5, dtype=torch.float64) * 3
    for p in (1, 3, 10):
        np.testing.assert_allclose(gram_statistics(fmap, (p,))[:, 0].numpy(), pood.Gram._gram_vector(fmap, p).numpy(),
                                   rtol=1e-10)
    lo, hi = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 1
    g = torch.rand(3, 4, dtype=torch.float64) * 3
    # Image i is compared with the bounds of class i (its "predicted class").
    np.testing.assert_allclose(
        deviations([g[:, None, :]], [lo.numpy()[:, None, :]], [hi.numpy()[:, None, :]], np.arange(3))[:, 0],
        pood.Gram._deviation(g, lo, hi).numpy(), rtol=1e-10)


def test_overview_averages_near_and_far_sets():
    from utils.tables import overview
    rows = [{"ood": o, "method": "m", "auroc": a} for o, a in
            (("cifar100", 80.0), ("tiny", 90.0), ("dtd", 95.0), ("lsun", 97.0), ("pure_color", 99.0), ("combined", 1.0))]
    (row,) = overview(rows)
    assert row["near"] == 85.0 and row["far"] == 97.0 and row["mean"] == pytest.approx(92.2)
    assert overview(rows, near=("dtd",))[0]["near"] == 95.0        # a set named near counts as near


def test_nac_taps_are_chosen_by_index_name_or_range():
    from utils.nac import select_taps
    names = ["conv1", "block1.conv", "trans1.conv1", "block2.conv", "fc"]
    assert select_taps(None, names) == select_taps("all", names) == [0, 1, 2, 3, 4]
    assert select_taps("trans1.conv1:", names) == [2, 3, 4]
    assert select_taps(":trans1.conv1", names) == [0, 1]
    assert select_taps("fc,0,1:3,fc", names) == [0, 1, 2, 4]          # sorted, without repeats
    assert select_taps("-2:", names) == [3, 4]
    with pytest.raises(ValueError, match="no tap named 'trans9'.*5 taps are conv1"):
        select_taps("trans9:", names)
    with pytest.raises(ValueError, match="tap index 5 is out of range; this model has 5 taps"):
        select_taps("5", names)
    with pytest.raises(ValueError, match="selects no tap"):
        select_taps("3:1", names)


def test_the_validated_tail_is_tail_plus_energy_untuned_and_takes_any_of_its_bases():
    rng = np.random.default_rng(0)
    pen = np.abs(rng.normal(size=(600, 16)))
    head = (rng.normal(size=(4, 16)), np.zeros(4))
    feats = lambda p: {"penultimate": p, "logits": p @ head[0].T, "labels": rng.integers(0, 4, len(p)),  # noqa: E731
                       "layers": [p]}
    held = np.arange(100)
    inp = Inputs(train=feats(pen), sets={"test": feats(np.abs(rng.normal(size=(50, 16))))}, head=head,
                 layer_scores={"test": rng.normal(size=(50, 2))},
                 calibration=Calibration.fit(rng.normal(size=(100, 2)), held=held))
    validated = get_method("LA-OOD tail + validated base")
    np.testing.assert_allclose(validated.score(inp)["test"], get_method("LA-OOD tail + Energy").score(inp)["test"])
    np.testing.assert_allclose(validated.score(inp, base="KNN")["test"],
                               get_method("LA-OOD tail + KNN").score(inp)["test"])
    assert [p["base"] for p in validated.grid_points(inp)][:2] == ["Energy", "ReAct"]
    # The paired row: one base alone is that base's tail row; a pair adds the two standardised scores.
    paired = get_method("LA-OOD tail + validated pair")
    np.testing.assert_allclose(paired.score(inp)["test"], get_method("LA-OOD tail + Energy").score(inp)["test"])
    both = paired.score(inp, bases=("Energy", "KNN"))["test"]
    excess = inp.calibration.tail_excess(inp.layer_scores["test"])
    np.testing.assert_allclose(both, get_method("LA-OOD tail + Energy").score(inp)["test"]
                               + get_method("LA-OOD tail + KNN").score(inp)["test"] - excess)
    points = [p["bases"] for p in paired.grid_points(inp)]
    assert len(points) == 10 + 45 and points[0] == ("Energy",) and len(set(points)) == 55
    with pytest.raises(ValueError, match="one or two of"):
        paired.score(inp, bases=("Energy", "KNN", "ViM"))
