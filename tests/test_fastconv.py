"""The faster small-map weight gradient gives the gradients of the standard convolution."""
import copy

import pytest
import torch
import torch.nn as nn

from models import create_model
from utils.fastconv import use_unfold_weight_grad


@pytest.mark.parametrize("size,bias,stride", [(2, True, 1), (4, False, 1), (4, True, 2), (8, True, 1)])
def test_layer_gradients_match(size, bias, stride):
    torch.manual_seed(0)
    ref = nn.Conv2d(16, 12, 3, stride=stride, padding=1, bias=bias)
    fast = use_unfold_weight_grad(copy.deepcopy(ref))
    x1 = torch.randn(5, 16, size, size, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = ref(x1), fast(x2)
    torch.testing.assert_close(out1, out2)
    g = torch.randn_like(out1)
    (out1 * g).sum().backward()
    (out2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ref.weight.grad, fast.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(ref.bias.grad, fast.bias.grad, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gradients_close_and_float32():
    torch.manual_seed(0)
    ref = nn.Conv2d(64, 64, 3, padding=1)
    fast = use_unfold_weight_grad(copy.deepcopy(ref))
    x = torch.randn(32, 64, 2, 2)
    for m in (ref, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x).float().pow(2).mean().backward()
    assert fast.weight.grad.dtype == torch.float32
    rel = (ref.weight.grad - fast.weight.grad).norm() / ref.weight.grad.norm()
    assert rel < 2e-2                                     # bf16 rounding, both ways


def test_whole_vgg16_gradients_match():
    torch.manual_seed(0)
    ref = create_model("vgg16").eval()                    # eval: no dropout, fixed BatchNorm
    fast = use_unfold_weight_grad(copy.deepcopy(ref))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    for m in (ref, fast):
        nn.functional.cross_entropy(m(x), y).backward()
    for (name, p1), p2 in zip(ref.named_parameters(), fast.parameters()):
        assert (p1.grad - p2.grad).norm() <= 1e-4 * p1.grad.norm() + 1e-12, name
    with torch.no_grad():                                 # inference takes the usual path
        torch.testing.assert_close(ref(x), fast(x))
