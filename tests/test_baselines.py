"""Baselines on constructed cases with known answers."""
import numpy as np
import torch

from models import create_model
from utils.baselines import KNN, Mahalanobis, energy, msp, odin


def test_msp_and_energy_on_fixed_logits():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [10.0, -10.0]])
    np.testing.assert_allclose(msp(logits), [-0.5, -0.75, -1 / (1 + np.exp(-20))])
    np.testing.assert_allclose(energy(logits), [-np.log(2), -np.log(4), -np.logaddexp(10, -10)])
    np.testing.assert_allclose(energy(logits, temperature=2.0), -2 * np.logaddexp(logits[:, 0] / 2, logits[:, 1] / 2))


def test_mahalanobis_on_gaussians():
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 0.0], [0.0, 0.25]])
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    y = rng.integers(0, 2, 20000)
    X = means[y] + rng.multivariate_normal([0, 0], cov, 20000)
    m = Mahalanobis().fit(X, y)
    np.testing.assert_allclose(m.means_, means, atol=0.05)
    # Distance to the nearest class mean under the shared covariance: (dx^2 / 4 + dy^2 / 0.25).
    q = np.array([[0.0, 1.0], [2.0, 0.0], [10.0, 0.5]])
    np.testing.assert_allclose(m.score(q), [4.0, 1.0, 1.0], rtol=0.03)


def test_knn_on_points_on_a_line():
    # Unit vectors at angles 0, 1, ..., 9 degrees; the query at 0 degrees has its 3rd neighbour at 2 degrees.
    angles = np.deg2rad(np.arange(10.0))
    train = np.c_[np.cos(angles), np.sin(angles)] * np.arange(1, 11)[:, None]   # lengths do not matter
    knn = KNN(k=3).fit(train)
    expected = 2 * np.sin(np.deg2rad(2.0) / 2)                                 # chord of 2 degrees
    np.testing.assert_allclose(knn.score(np.array([[5.0, 0.0]])), [expected], rtol=1e-4)   # float32
    assert knn.score(np.array([[0.0, 1.0]]))[0] > knn.score(np.array([[1.0, 0.01]]))[0]


def test_odin_perturbation_follows_the_released_recipe():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    s0 = odin(model, images, torch.device("cpu"), epsilon=0.0)
    from utils.data import to_input
    with torch.no_grad():
        plain = -torch.softmax(model(to_input(images)) / 1000, 1).max(1).values.double().numpy()
    np.testing.assert_allclose(s0, plain, rtol=1e-5)             # no perturbation: tempered MSP
    s1 = odin(model, images, torch.device("cpu"))
    assert (s1 <= s0 + 1e-9).all()                               # the step raises the max softmax
