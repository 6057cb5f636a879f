"""Co-training: the torch decision value equals scikit-learn's, gradients flow, and the loss does its job."""
import numpy as np
import pytest
import torch

from models import create_model
from utils.cotrain import CoTrainLoss, OCSVMDecision
from utils.inputs import to_input
from utils.detectors import LAOOD, fit_layer


def test_torch_decision_equals_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8))
    det, _ = fit_layer(X, gammas=(0.05, 0.1))
    svm = det[-1]
    Z = det[0].transform(rng.normal(size=(50, 8)) * 1.5)
    ours = OCSVMDecision(svm)(torch.tensor(Z, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(ours, svm.decision_function(Z) + svm.offset_, rtol=1e-4, atol=1e-5)


def test_non_svm_and_mismatched_detectors_are_refused():
    rng = np.random.default_rng(0)
    model = create_model("resnet20")
    with pytest.raises(ValueError, match="RBF One-Class SVM"):
        OCSVMDecision(fit_layer(rng.normal(size=(100, 4)), "iforest")[0][-1])
    with pytest.raises(ValueError, match="3 detectors given, but resnet20 has 20 layers"):
        CoTrainLoss(model, [fit_layer(rng.normal(size=(100, 4)))[0]] * 3)
    dets = [fit_layer(rng.normal(size=(100, 4)), gammas=(0.1,))[0]] * 20
    with pytest.raises(ValueError, match="expects 4 features, but resnet20's layer 0 has 16"):
        CoTrainLoss(model, dets)


def _setup(seed=0, n=96):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_model("resnet20")
    images = torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        for m in model.modules():            # BatchNorm running statistics of these images, as in a
            if isinstance(m, torch.nn.BatchNorm2d):   # trained model: train and eval mode then agree
                m.momentum = None
        model.train()(to_input(images))
        feats = model.eval().forward_intermediates(to_input(images)).features
    la = LAOOD(gammas=(0.05,), n_jobs=1).fit([f.numpy() for f in feats], progress=False)
    return model, images, la.detectors_


def test_gradients_reach_the_backbone():
    model, images, dets = _setup()
    loss = CoTrainLoss(model, dets, lam=1.0, ce_weight=0.0)
    loss.refresh_statistics(images, torch.device("cpu"), progress=False)
    model.train()
    value, _ = loss(model, to_input(images[:8]), torch.zeros(8, dtype=torch.long))
    value.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads[:4]) and model.conv1.weight.grad.abs().sum() > 0


def test_a_few_steps_with_large_lambda_raise_the_decision_value():
    model, images, dets = _setup()
    loss = CoTrainLoss(model, dets, lam=10.0, ce_weight=0.0)
    device = torch.device("cpu")
    loss.refresh_statistics(images, device, progress=False)
    x = to_input(images)
    model.eval()
    with torch.no_grad():
        before = loss.decision(x)[1].item()
    # The RBF bumps are narrow (gamma 0.05 on 16-d standardised features): small steps climb them,
    # large ones jump past (lr 1e-3 here lowers D), so the step is kept small.
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    for _ in range(5):
        model.train()
        value, _ = loss(model, x, torch.zeros(len(x), dtype=torch.long))
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = loss.decision(x)[1].item()
    assert after > before, (before, after)


def test_layer_subsets_for_deep_networks():
    model, images, dets = _setup()
    loss = CoTrainLoss(model, dets, lam=1.0, layers_per_batch=10)
    loss.refresh_statistics(images, torch.device("cpu"), progress=False)
    logits, d = loss.decision(to_input(images[:4]), layers=[0, 3, 19])
    assert logits.shape == (4, 10) and torch.isfinite(d)
    assert loss.layers_per_batch == 10
