"""NAC-UE as its authors compute it (utils/nac_authors.py): the pieces on constructed cases, and the registry's
scores against an independent computation on real CIFAR-10 and DTD images through the shared ResNet-20."""
import numpy as np
import pytest
import torch

from conftest import CHECKPOINTS, DATA, need
from utils import methods, nac_authors
from utils.nac_authors import LayerCoverage, edges, fit_rows, pooled_products


def test_edges_are_symmetric_about_a_half_and_dense_near_it():
    e = edges(50)
    assert len(e) == 50 and e[0] == 0 and e[-2] == pytest.approx(1.01) and e[-1] == 1.2
    np.testing.assert_allclose(e[[1, 2, 23, 24, 25]], [0.119, 0.183, 0.494, 0.5, 0.506], atol=1e-3)
    inner = e[1:-2]
    np.testing.assert_allclose(inner + inner[::-1], 1.0, atol=1e-12)          # mirrored about 0.5
    widths = np.diff(e[:25])
    assert (np.diff(widths) < 0).all()                                          # narrower towards 0.5


def test_layer_coverage_counts_states_per_neuron_and_interval():
    # alpha 1: states sigmoid(v); two neurons, the second always at state 0.5 exactly.
    train = np.array([[-10.0, 0.0], [-10.0, 0.0], [10.0, 0.0]])
    cov = LayerCoverage(m=4, o_star=2, alpha=1.0).fit(train)       # edges 0, 0.5, ... with m = 4: [0, .5, 1.01, 1.2]
    np.testing.assert_array_equal(edges(4), [0.0, 0.5, 1.01, 1.2])
    np.testing.assert_array_equal(cov.counts_, [[2, 1, 0], [0, 3, 0]])
    # An image low on neuron 0 (count 2 -> 1.0) and at 0.5 on neuron 1 (count 3 -> 1.0); one high (1 -> 0.5).
    np.testing.assert_allclose(cov.coverage(np.array([[-3.0, 0.0], [3.0, 0.0]])), [1.0, 0.75])


def test_pooled_gradient_is_autograd_s():
    rng = np.random.default_rng(0)
    weight, bias, o = rng.normal(size=(10, 8)), rng.normal(size=10), np.abs(rng.normal(size=(5, 8)))
    z = torch.tensor(o, requires_grad=True)
    loss = -torch.log_softmax(z @ torch.tensor(weight).T + torch.tensor(bias), 1).mean(1).sum()
    (g,) = torch.autograd.grad(loss, z)
    np.testing.assert_allclose(pooled_products(o, (weight, bias)), o * g.numpy(), rtol=1e-10)


def test_default_stages_are_the_authors_resnet_layers_and_their_counterparts():
    from models import create_model
    assert nac_authors.default_stages(create_model("resnet34", 10)) == ["layer1", "layer2", "layer3"]
    assert nac_authors.default_stages(create_model("densenet100", 10)) == ["trans1", "trans2"]
    assert nac_authors.default_stages(create_model("vgg16", 10)) == ["features.6", "features.13", "features.23",
                                                                     "features.33"]


def test_fit_rows_take_as_many_of_each_class():
    labels = np.repeat(np.arange(10), 500)
    rows = fit_rows(labels, seed=0)
    assert len(rows) == 1000 and np.array_equal(np.bincount(labels[rows]), [100] * 10)
    assert np.array_equal(rows, fit_rows(labels, seed=0)) and not np.array_equal(rows, fit_rows(labels, seed=1))


def _independent(model, x, stage_names):
    """The authors' definition computed another way: hooks keep each stage's and the pooled output with
    retain_grad, one backward of the summed cross-entropy against the uniform distribution, then per channel
    sum(o) * sum(g)."""
    kept = {}
    named = dict(model.named_modules())

    def keep(name):
        def hook(_m, _i, out):
            out.retain_grad()
            kept[name] = out
        return hook
    head_input = {}
    handles = [named[n].register_forward_hook(keep(n)) for n in stage_names]
    handles.append(named[model.head_name].register_forward_pre_hook(
        lambda _m, inputs: (inputs[0].retain_grad(), head_input.__setitem__("pooled", inputs[0]))[0]))
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = sum(-(torch.log_softmax(logits, 1)[i]).mean() for i in range(len(x)))
    loss.backward()
    for h in handles:
        h.remove()
    out = {n: (kept[n].sum((2, 3)) * kept[n].grad.sum((2, 3))).detach().double().numpy() for n in stage_names}
    p = head_input["pooled"]
    out["pooled"] = (p * p.grad).detach().double().numpy()
    return out


def _coverage_loop(train, values, m, o_star, alpha):
    """Coverage by the definition, a threshold comparison per interval."""
    e = edges(m)
    with np.errstate(over="ignore"):
        s_train, s = (1 / (1 + np.exp(-alpha * v)) for v in (train, values))
    score = np.zeros(len(values))
    for c in range(train.shape[1]):
        for k in range(len(e) - 1):
            inside = lambda st: (st[:, c] >= e[k]) & (st[:, c] < e[k + 1])  # noqa: E731
            score += inside(s) * min(inside(s_train).sum() / o_star, 1.0)
    return score / train.shape[1]


@pytest.mark.shared
@pytest.mark.slow
def test_registry_scores_equal_the_authors_definition_on_real_images(tmp_path):
    from utils.inputs import to_input
    from utils.extraction import extract
    from utils.features import load_head, open_backbone, save_head
    from utils.generate import DataConfig, generate, load_images
    from utils.paths import Layout
    cfg = DataConfig(ind="cifar10", oods=["dtd"], roots=[need(DATA)], max_train=300, max_test=60, max_ood=60)
    layout = Layout(tmp_path / "gen", tmp_path / "runs")
    generate(cfg, layout)
    model, _ = open_backbone(need(CHECKPOINTS / "resnet20-cifar10-akamaster.th"), "cifar10", "resnet20")
    stages = nac_authors.default_stages(model)
    assert stages == ["layer1", "layer2", "layer3"]
    save_head(model, tmp_path)
    head = load_head(tmp_path)
    feats, independent = {}, {}
    for name in ("train", "test", "dtd"):
        images, labels, _ = load_images(layout, "cifar10", cfg.tag, name)
        (tmp_path / name).mkdir()
        extract(model, images, tmp_path / name, torch.device("cpu"), progress=False)
        rows = fit_rows(labels, 0, size=100) if name == "train" else np.arange(len(images))
        stage = nac_authors.stage_products(model, images[rows], stages, torch.device("cpu"), batch_size=32)
        value = {"rows": rows, "stages": [stage[s] for s in stages][::-1], "names": stages[::-1]}
        feats[name] = {"penultimate": np.load(tmp_path / name / "penultimate.npy"), "labels": labels,
                       "logits": np.load(tmp_path / name / "logits.npy"),
                       ("nac_stages_fit" if name == "train" else "nac_stages"): value}
        independent[name] = _independent(model, to_input(images[rows], torch.device("cpu")), stages)
        for s in stages:         # the stored values are the definition's, to float32
            np.testing.assert_allclose(stage[s], independent[name][s], rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(pooled_products(feats[name]["penultimate"][rows], head), independent[name]["pooled"],
                                   rtol=2e-3, atol=1e-6)
    inputs = methods.Inputs(train=feats["train"], sets={"test": feats["test"], "dtd": feats["dtd"]}, head=head)
    got = methods.get_method("NAC-UE (authors)").score(inputs)
    order = ["pooled", "layer3", "layer2", "layer1"]       # deepest first, with the authors' four settings
    for name in ("test", "dtd"):
        want = -np.mean([_coverage_loop(independent["train"][layer], independent[name][layer], *setting)
                         for layer, setting in zip(order, nac_authors.CIFAR10_SETTING)], axis=0)
        agree = np.isclose(got[name], want, atol=1e-9)
        assert agree.mean() > 0.95, f"{name}: {agree.mean():.2%} of the scores agree"   # float32 vs float64 at bin edges
        assert np.corrcoef(got[name], want)[0, 1] > 0.99


def test_the_gradient_pass_frame_restores_the_model_even_when_the_pass_fails():
    from utils.hooks import frozen_with_hooks
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)                 # a parameter frozen before stays frozen after
    seen = []
    with pytest.raises(RuntimeError, match="in the pass"):
        with frozen_with_hooks(model, [(model[0], lambda _m, _i, out: seen.append(out.shape))]):
            assert not any(p.requires_grad for p in model.parameters())
            model(torch.zeros(5, 3))
            raise RuntimeError("in the pass")
    assert seen == [torch.Size([5, 4])]
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]
    model(torch.zeros(1, 3))
    assert len(seen) == 1                                # the hook is gone
