"""ODIN, computed in stage 2 with the network's input gradient."""
import numpy as np
import torch

from models import PRESETS, create_model
from utils.inputs import to_input
from utils.odin import odin


def test_odin_perturbation_follows_the_released_recipe():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    s0 = odin(model, images, torch.device("cpu"), epsilon=0.0)
    with torch.no_grad():
        plain = -torch.softmax(model(to_input(images)) / 1000, 1).max(1).values.double().numpy()
    np.testing.assert_allclose(s0, plain, rtol=1e-5)             # no perturbation: tempered MSP
    s1 = odin(model, images, torch.device("cpu"))
    assert (s1 <= s0 + 1e-9).all()                               # the step raises the max softmax


def test_odin_feeds_the_model_its_own_normalisation():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    model.normalization = PRESETS["cifar"]
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        plain = -torch.softmax(model(to_input(images, normalization=PRESETS["cifar"])) / 1000, 1).max(1).values
    np.testing.assert_allclose(odin(model, images, torch.device("cpu"), epsilon=0.0), plain.double().numpy(),
                               rtol=1e-5)
