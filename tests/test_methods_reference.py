"""The scoring methods agree with pytorch-ood 0.4 (the field's reference implementations) on the shared
VGG16's features of real CIFAR-10 and DTD images: equal scores to a relative 1e-5, or the same ranking
where pytorch-ood's score is a monotone map of this repository's (said per method)."""
import numpy as np
import pytest
import pytorch_ood.detector as pood
import torch
from scipy.stats import spearmanr

from conftest import CHECKPOINTS, DATA, need
from utils import methods
from utils.extraction import extract
from utils.features import load_head, open_backbone, save_head
from utils.inputs import to_input
from utils.generate import DataConfig, generate, load_images
from utils.paths import Layout
from utils.splits import held_split

pytestmark = [pytest.mark.shared, pytest.mark.slow]   # reference checks on real features: the full suite


def _features(root, checkpoint, model_name, ood, max_train, max_test, max_ood):
    """Stage 1 and 2 on seeded subsets of the shared data: (inputs for the registry, head weight, head bias)."""
    cfg = DataConfig(ind="cifar10", oods=[ood], roots=[need(DATA)], max_train=max_train, max_test=max_test,
                     max_ood=max_ood)
    layout = Layout(root / "gen", root / "runs")
    generate(cfg, layout)
    model, _ = open_backbone(need(CHECKPOINTS / checkpoint), "cifar10", model_name)
    out = {}
    for name in ("train", "test", ood):
        images, labels, _ = load_images(layout, "cifar10", cfg.tag, name)
        (root / name).mkdir()
        extract(model, images, root / name, torch.device("cpu"), progress=False)
        out[name] = {"logits": np.load(root / name / "logits.npy"), "labels": labels,
                     "penultimate": np.load(root / name / "penultimate.npy")}
    save_head(model, root)
    weight, bias = load_head(root)
    inputs = methods.Inputs(train=out["train"], sets={"test": out["test"], ood: out[ood]}, head=(weight, bias))
    return inputs, weight, bias


@pytest.fixture(scope="module")
def vgg16_features(tmp_path_factory):
    inputs, weight, bias = _features(tmp_path_factory.mktemp("ref"), "vgg16-cifar10.pt", "vgg16", "dtd",
                                     max_train=2000, max_test=1000, max_ood=1000)
    return inputs, torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def _ours(inputs, name):
    got = methods.get_method(name).fn(inputs)
    return np.concatenate([got["test"], got["dtd"]])


def _eval(inputs, key):
    return torch.from_numpy(np.concatenate([inputs.sets["test"][key], inputs.sets["dtd"][key]])).float()


def _train(inputs):
    return torch.from_numpy(inputs.train["penultimate"]).float(), torch.from_numpy(inputs.train["labels"])


def test_msp_energy_gen_equal_pytorch_ood(vgg16_features):
    inputs, _, _ = vgg16_features
    logits = _eval(inputs, "logits").double()      # float64, as this repository computes them
    np.testing.assert_allclose(_ours(inputs, "MSP"), pood.MaxSoftmax.score(logits).numpy(), rtol=1e-5)
    np.testing.assert_allclose(_ours(inputs, "Energy"), pood.EnergyBased.score(logits).numpy(), rtol=1e-5)
    # pytorch-ood averages over the M classes where the paper sums: the same score times M = 10.
    np.testing.assert_allclose(_ours(inputs, "GEN"), 10 * pood.GEN.score(logits, gamma=0.1, M=10).numpy(), rtol=1e-5)


def test_knn_equals_pytorch_ood(vgg16_features):
    inputs, _, _ = vgg16_features
    train, labels = _train(inputs)
    ref = pood.KNN(None, k=50).fit_features(train.double(), labels).predict_features(
        _eval(inputs, "penultimate").double())
    np.testing.assert_allclose(_ours(inputs, "KNN"), ref.numpy(), rtol=1e-5)


def test_mahalanobis_ranks_as_pytorch_ood(vgg16_features):
    inputs, _, _ = vgg16_features
    ref = pood.Mahalanobis(None).fit_features(*_train(inputs)).predict_features(
        _eval(inputs, "penultimate")).numpy()
    assert spearmanr(_ours(inputs, "Mahalanobis"), ref).statistic > 0.9999


def test_react_ash_dice_equal_pytorch_ood(vgg16_features):
    inputs, w, b = vgg16_features
    pen = _eval(inputs, "penultimate")
    head = lambda z: z.flatten(1) @ w.T + b  # noqa: E731
    react = pood.ReAct(None, head, percentile=0.9).fit_feature_maps(*_train(inputs))
    np.testing.assert_allclose(_ours(inputs, "ReAct"), react.predict_feature_maps(pen).numpy(), rtol=1e-5)
    ash = pood.ASH(None, head, variant="ash-s", percentile=0.9)
    np.testing.assert_allclose(_ours(inputs, "ASH-S"), ash.predict_feature_maps(pen[:, :, None, None]).numpy(),
                               rtol=1e-5)
    dice = pood.DICE(None, w, b, p=0.9).fit_features(*_train(inputs))
    np.testing.assert_allclose(_ours(inputs, "DICE"), dice.predict_features(pen).numpy(), rtol=1e-5)


def test_vim_equals_pytorch_ood(vgg16_features, monkeypatch):
    """pytorch-ood computes ViM in float32; VGG16's residuals are tiny (alpha about 170), so its float32
    eigenvectors move scores by about 2% (rank correlation 0.9998). Run in float64, its algorithm gives
    this repository's scores."""
    inputs, w, b = vgg16_features
    assert methods.vim_dim(512) == 256
    monkeypatch.setattr(torch.Tensor, "float", torch.Tensor.double)     # pytorch-ood's casts, in float64
    train, labels = _train(inputs)
    vim = pood.ViM(None, d=256, w=w, b=b).fit_features(train, labels)
    ref = vim.predict_features(_eval(inputs, "penultimate")).numpy()
    np.testing.assert_allclose(_ours(inputs, "ViM"), ref, rtol=1e-5)


# The 2023-2025 methods run pytorch-ood's own implementations (utils/methods/activations.py); each test computes the
# paper's formula independently in float64 NumPy on the same real features and checks the registry entry
# (that is, pytorch-ood wired to the saved features and head) gives the same scores.

def _np_eval(inputs, key):
    return np.concatenate([inputs.sets["test"][key], inputs.sets["dtd"][key]]).astype(np.float64)


def test_fdbd_equals_its_formula(vgg16_features):
    inputs, w, b = vgg16_features
    W, B = w.double().numpy(), b.double().numpy()
    z = _np_eval(inputs, "penultimate")
    mu = inputs.train["penultimate"].astype(np.float64).mean(0)
    logits = z @ W.T + B
    pred = logits.argmax(1)
    gaps = np.abs(logits - logits[np.arange(len(z)), pred][:, None])
    norms = np.linalg.norm(W[pred][:, None, :] - W[None, :, :], axis=2)
    norms[np.arange(len(z)), pred] = 1.0
    expected = -(gaps / norms).sum(1) / ((W.shape[0] - 1) * np.linalg.norm(z - mu, axis=1))
    np.testing.assert_allclose(_ours(inputs, "fDBD"), expected, rtol=1e-4)


def test_rmds_equals_its_formula_and_ranks_as_pytorch_ood(vgg16_features):
    """Relative Mahalanobis: min_k d_k(z) - d_0(z), here in float64 with pseudo-inverses. pytorch-ood's RMD
    (float32, the centred outer products summed without dividing by N, ``inv`` with a 1e-6 ridge) gives the
    same score times N up to its rounding: the ranking agrees."""
    inputs, _, _ = vgg16_features
    X, y = inputs.train["penultimate"].astype(np.float64), inputs.train["labels"]
    z = _np_eval(inputs, "penultimate")
    means = np.stack([X[y == c].mean(0) for c in range(10)])
    centred = X - means[y]
    prec = np.linalg.pinv(centred.T @ centred / len(X), hermitian=True)
    mu0 = X.mean(0)
    prec0 = np.linalg.pinv((X - mu0).T @ (X - mu0) / len(X), hermitian=True)
    d_k = np.stack([np.einsum("nd,de,ne->n", z - m, prec, z - m) for m in means], 1)
    d_0 = np.einsum("nd,de,ne->n", z - mu0, prec0, z - mu0)
    expected = (d_k - d_0[:, None]).min(1)
    np.testing.assert_allclose(_ours(inputs, "RMDS"), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # Why float64: the penultimate layer's dead units make the class-shared covariance singular to float32 (its
    # condition number is beyond 1 / float32's epsilon), so pytorch-ood's RMD in float32 ranks the formula's
    # scores differently from one CPU to the next (rank correlation 0.43 on an Intel Xeon, 0.94 on an AMD EPYC).
    # Its algorithm in float64 agrees.
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(X))
    assert eigenvalues.max() / max(eigenvalues.min(), np.finfo(np.float64).tiny) > 1 / np.finfo(np.float32).eps
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train, labels = _train(inputs)
        ref = pood.RMD(None).fit_features(train.double(), labels).predict_features(
            _eval(inputs, "penultimate").double()).numpy()
    finally:
        torch.set_default_dtype(default)
    assert spearmanr(_ours(inputs, "RMDS"), ref).statistic > 0.999


def test_scale_equals_its_formula(vgg16_features):
    inputs, w, b = vgg16_features
    z = _np_eval(inputs, "penultimate")
    k = z.shape[1] - int(np.round(z.shape[1] * 0.85))
    top = -np.sort(-z, axis=1)[:, :k].sum(1)
    scaled = z * np.exp(z.sum(1) / top)[:, None]
    logits = scaled @ w.double().numpy().T + b.double().numpy()
    expected = -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1)
    np.testing.assert_allclose(_ours(inputs, "SCALE"), expected, rtol=1e-6)


def test_nci_equals_its_formula(vgg16_features):
    inputs, w, b = vgg16_features
    W = w.double().numpy()
    z = _np_eval(inputs, "penultimate")
    centred = z - inputs.train["penultimate"].astype(np.float64).mean(0)
    wc = W[(z @ W.T + b.double().numpy()).argmax(1)]
    # The paper's (h - mu_G) . w_c / ||h - mu_G||: the class vector's norm is not divided out (under neural
    # collapse every class vector has the same norm).
    expected = -(centred * wc).sum(1) / np.linalg.norm(centred, axis=1)
    np.testing.assert_allclose(_ours(inputs, "NCI"), expected, rtol=1e-4, atol=1e-6)


def test_nnguide_equals_its_formula(vgg16_features):
    inputs, w, b = vgg16_features
    W, B = w.double().numpy(), b.double().numpy()
    bank = held_split(len(inputs.train["penultimate"]), 100, 0)[0]     # 1% of 2,000 < 100: 100 rows
    X = inputs.train["penultimate"][bank].astype(np.float64)
    lse = lambda L: np.log(np.exp(L - L.max(1, keepdims=True)).sum(1)) + L.max(1)  # noqa: E731
    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    scaled_bank = unit(X) * lse(X @ W.T + B)[:, None]
    z = _np_eval(inputs, "penultimate")
    sims = unit(z) @ scaled_bank.T
    guidance = -np.sort(-sims, axis=1)[:, :100].mean(1)
    expected = -guidance * lse(z @ W.T + B)
    np.testing.assert_allclose(_ours(inputs, "NNGuide"), expected, rtol=1e-4)


@pytest.mark.parametrize("spec", [None, "layer2.2.conv2:"])
def test_nac_ue_equals_pytorch_ood(tmp_path, spec):
    """NAC-UE from stage 2's stored z * dKL/dz (utils/nac.py) against pytorch-ood's NACUE run on the network
    itself, same layers (every tap of the shared ResNet-20, or the last eight as ``--nac-taps`` picks them:
    our pass freezes the parameters and starts the graph at the first of them, pytorch-ood's does neither),
    same hyperparameters, real images."""
    from utils.nac import Coverage, nac_values, select_taps
    cfg = DataConfig(ind="cifar10", oods=["dtd"], roots=[need(DATA)], max_train=400, max_test=100, max_ood=100)
    layout = Layout(tmp_path / "gen", tmp_path / "runs")
    generate(cfg, layout)
    model, _ = open_backbone(need(CHECKPOINTS / "resnet20-cifar10-akamaster.th"), "cifar10", "resnet20")
    taps = select_taps(spec, model.tap_names)
    assert len(taps) == (20 if spec is None else 8)
    widths, layers = [model.tap_widths[i] for i in taps], [model.tap_modules[i] for i in taps]
    train = np.asarray(load_images(layout, "cifar10", cfg.tag, "train")[0])
    evaluated = np.concatenate([np.asarray(load_images(layout, "cifar10", cfg.tag, n)[0]) for n in ("test", "dtd")])
    cpu = torch.device("cpu")
    train_values = nac_values(model, train, cpu, 100, taps=taps)
    eval_values = nac_values(model, evaluated, cpu, 100, taps=taps)
    assert train_values.shape == (400, sum(widths)) and train_values.dtype == np.float32
    assert all(p.requires_grad for p in model.parameters())                 # unfrozen after the pass
    inputs = methods.Inputs(train={"nac": train_values, "nac_widths": widths, "nac_taps": taps},
                            sets={"test": {"nac": eval_values, "nac_taps": taps}})
    ours = methods.get_method("NAC-UE (pytorch-ood)").fn(inputs)["test"]
    np.testing.assert_array_equal(ours, Coverage(widths).fit(train_values).score(eval_values))
    norm = model.normalization
    batches = [to_input(train[s:s + 100], normalization=norm) for s in range(0, len(train), 100)]
    ref = pood.NACUE(model, layers=layers).fit(batches)
    theirs = torch.cat([ref.predict(to_input(evaluated[s:s + 100], normalization=norm))
                        for s in range(0, len(evaluated), 100)]).numpy()
    assert np.mean(np.isclose(ours, theirs, rtol=0, atol=1e-5)) > 0.99       # a state on a bin edge may differ
    assert spearmanr(ours, theirs).statistic > 0.999
    assert len(np.unique(ours)) > 50                                          # coverage varies between images
    inputs.sets["test"]["nac_taps"] = taps[1:]                               # values of other taps: refused
    with pytest.raises(ValueError, match="NAC values of other taps than the train split"):
        methods.get_method("NAC-UE (pytorch-ood)").fn(inputs)


def test_react_on_densenet_reads_the_right_inputs_and_equals_pytorch_ood(tmp_path):
    """ReAct is far below Energy on the DICE DenseNet-BC-100 (docs/results.md); this rules out our inputs: the
    saved penultimate features are the head's input (the head applied to them gives the model's logits) and
    ReAct's scores on them equal pytorch-ood's. What it is instead: benchmarks/react_clipping.py."""
    inputs, weight, bias = _features(tmp_path, "densenet100-cifar10-dice.pth.tar", "densenet100", "pure_color",
                                     max_train=300, max_test=100, max_ood=100)
    out = {"train": inputs.train, **inputs.sets}
    for name, f in out.items():
        np.testing.assert_allclose(methods.linear(f["penultimate"], (weight, bias)), f["logits"], atol=1e-3,
                                   err_msg=name)
    assert (out["train"]["penultimate"] >= 0).all()     # after DenseNet's last BN and ReLU, as ReAct assumes
    w, b = torch.from_numpy(weight).float(), torch.from_numpy(bias).float()
    head = lambda z: z.flatten(1) @ w.T + b  # noqa: E731
    react = pood.ReAct(None, head, percentile=0.9).fit_feature_maps(
        torch.from_numpy(out["train"]["penultimate"]), torch.from_numpy(out["train"]["labels"]))
    got = methods.get_method("ReAct").fn(inputs)
    for name in ("test", "pure_color"):
        expected = react.predict_feature_maps(torch.from_numpy(out[name]["penultimate"])).numpy()
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, err_msg=name)
