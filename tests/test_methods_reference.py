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
from utils.features import extract, load_head, open_backbone, save_head
from utils.generate import DataConfig, generate, load_images
from utils.paths import Layout


@pytest.fixture(scope="module")
def vgg16_features(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    cfg = DataConfig(ind="cifar10", oods=["dtd"], roots=[need(DATA)], max_train=2000, max_test=1000, max_ood=1000)
    layout = Layout(root / "gen", root / "runs")
    generate(cfg, layout)
    model, _ = open_backbone(need(CHECKPOINTS / "vgg16-cifar10.pt"), "cifar10", "vgg16")
    out = {}
    for name in ("train", "test", "dtd"):
        images, labels, _ = load_images(layout, "cifar10", cfg.tag, name)
        (root / name).mkdir()
        extract(model, images, root / name, torch.device("cpu"), progress=False)
        out[name] = {"logits": np.load(root / name / "logits.npy"), "labels": labels,
                     "penultimate": np.load(root / name / "penultimate.npy")}
    save_head(model, root)
    weight, bias = load_head(root)
    inputs = methods.Inputs(train=out["train"], sets={"test": out["test"], "dtd": out["dtd"]}, head=(weight, bias))
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
