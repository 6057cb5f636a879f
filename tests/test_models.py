"""Contract test of every registered model (in the spirit of timm's tests/test_models.py)."""
import pytest
import torch
import torch.nn as nn

from conftest import CHECKPOINTS, need
from models import PRESETS, create_model, list_models, load_model, parse_normalization, read_checkpoint
from utils.io import save_checkpoint

# Tap counts of the original code, and its state_dict sizes (entries, parameters) for 10 and 100 classes.
EXPECTED = {
    "vgg16": (13, 97, 15_253_578, 15_299_748),
    "resnet34": (34, 218, 21_282_122, 21_328_292),
    "densenet100": (100, 596, 769_162, 800_032),
    "resnet20": (20, 116, 269_722, 275_572),
    "resnet56": (56, 332, 853_018, 858_868),
}


def test_registry_lists_every_model():
    assert set(list_models()) == set(EXPECTED)
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        create_model("vgg19")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_architecture_sizes(name, num_classes):
    model = create_model(name, num_classes)
    taps, entries, p10, p100 = EXPECTED[name]
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == (p10 if num_classes == 10 else p100)
    assert model.num_taps == taps


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_taps_widths_finite_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, 10).train()
    x = torch.randn(2, 3, 32, 32)
    out = model.forward_intermediates(x, penultimate=True)
    assert len(out.features) == model.num_taps
    assert [f.shape for f in out.features] == [torch.Size([2, w]) for w in model.tap_widths]
    assert all(torch.isfinite(f).all() for f in out.features)
    assert out.logits.shape == (2, 10)
    if model.tap_names[-1] == model.head_name:                # ResNets and DenseNet tap the logits last
        assert torch.equal(out.features[-1], out.logits)
    assert out.penultimate.shape == (2, dict(model.named_modules())[model.head_name].in_features)
    # Gradients flow from every tap back to the first convolution's weights.
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    for i in (0, model.num_taps // 2, model.num_taps - 1):
        model.zero_grad()
        model.forward_intermediates(x).features[i].sum().backward()
        assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    # No hooks are left behind: a second call returns the same and the module holds no hooks.
    assert all(not m._forward_hooks for m in model.modules())


def test_taps_subset_and_plain_forward_agree():
    model = create_model("resnet20").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_intermediates(x)
        some = model.forward_intermediates(x, layers=[0, 5])
        assert torch.allclose(full.logits, model(x))
    assert torch.equal(some.features[0], full.features[0]) and torch.equal(some.features[1], full.features[5])


def test_vgg_taps_are_conv_outputs_before_batchnorm():
    """Hand-computed reference: run VGG's features module step by step and pool each conv output."""
    torch.manual_seed(1)
    model = create_model("vgg16").eval()
    x = torch.randn(2, 3, 32, 32)
    expected, h = [], x
    with torch.no_grad():
        for m in model.features:
            h = m(h)
            if isinstance(m, nn.Conv2d):
                expected.append(h.mean(dim=(2, 3)))
        got = model.forward_intermediates(x).features
    assert len(got) == 13
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checkpoint_round_trip_strict(tmp_path, name):
    model = create_model(name, 100)
    save_checkpoint(model, tmp_path / "m.pt", epoch=3)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.arch == name and loaded.num_classes == 100
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    # A plain state dict, as the original code saved it, loads given the architecture.
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert load_model(tmp_path / "plain.pt", name).num_classes == 100


@pytest.mark.shared
@pytest.mark.parametrize("file,arch", [("vgg16-cifar10.pt", "vgg16"),
                                       ("resnet20-cifar10-akamaster.th", "resnet20"),
                                       ("resnet56-cifar10-akamaster.th", "resnet56")])
def test_shared_checkpoints_load_strictly(file, arch):
    model = load_model(need(CHECKPOINTS / file), arch, 10)
    assert model.arch == arch and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.shared
def test_wrong_checkpoint_errors_are_clear(tmp_path):
    vgg = need(CHECKPOINTS / "vgg16-cifar10.pt")
    with pytest.raises(ValueError, match="does not fit model resnet34"):
        load_model(vgg, "resnet34")
    with pytest.raises(ValueError, match="has 10 classes, but 100 were expected"):
        load_model(vgg, "vgg16", 100)
    with pytest.raises(ValueError, match="does not name its architecture"):
        load_model(vgg)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt", "vgg16")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read safely") as err:
        load_model(tmp_path / "junk.pt", "vgg16")
    assert "weights_only=False" not in str(err.value)            # never advise the unsafe load
    torch.save({"state_dict": {}, "hook": _Marker()}, tmp_path / "objects.pt")   # an object torch refuses to unpickle
    with pytest.raises(ValueError, match="never unpickled") as err:
        load_model(tmp_path / "objects.pt", "vgg16")
    assert "weights_only=False" not in str(err.value) and not _Marker.created
    save_checkpoint(create_model("resnet20"), tmp_path / "r20.pt")
    with pytest.raises(ValueError, match="holds a resnet20, but --model vgg16"):
        load_model(tmp_path / "r20.pt", "vgg16")


@pytest.mark.parametrize("name,mmacs", [("vgg16", 313.7), ("resnet20", 40.6), ("resnet56", 125.5),
                                         ("resnet34", 1159.4), ("densenet100", 287.9)])
def test_tap_macs(name, mmacs):
    """Multiply-accumulates per 32x32 image (commonly quoted: VGG16-CIFAR 0.31G, ResNet-20 41M,
    ResNet-56 125M, ResNet34 1.16G, DenseNet-BC-100 0.29G), cumulative at each tap."""
    cumulative, total = create_model(name).tap_macs()
    assert total / 1e6 == pytest.approx(mmacs, abs=0.1)
    assert len(cumulative) == create_model(name).num_taps
    assert all(a < b for a, b in zip(cumulative, cumulative[1:])) and cumulative[-1] <= total


def test_normalization_travels_with_the_weights(tmp_path):
    model = create_model("resnet20")
    assert model.normalization == PRESETS["imagenet"]              # the recipe's default
    model.normalization = PRESETS["cifar"]
    save_checkpoint(model, tmp_path / "c.pt")
    assert read_checkpoint(tmp_path / "c.pt").normalization.same_as(PRESETS["cifar"])
    assert load_model(tmp_path / "c.pt").normalization.same_as(PRESETS["cifar"])
    with pytest.raises(ValueError, match="records its input normalisation"):
        load_model(tmp_path / "c.pt", normalization=PRESETS["imagenet"])
    # A plain state dict takes the flag, else the recipe's default.
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert load_model(tmp_path / "plain.pt", "resnet20").normalization == PRESETS["imagenet"]
    assert load_model(tmp_path / "plain.pt", "resnet20", normalization=PRESETS["cifar"]).normalization.name == "cifar"


def test_parse_normalization():
    assert parse_normalization("cifar") == PRESETS["cifar"]
    custom = parse_normalization("0.5,0.5,0.5,0.25,0.25,0.25")
    assert custom.mean == (0.5, 0.5, 0.5) and custom.std == (0.25, 0.25, 0.25)
    for bad in ("imagnet", "1,2,3", "0.5,0.5,0.5,0,1,1"):
        with pytest.raises(ValueError, match="preset"):
            parse_normalization(bad)


@pytest.mark.shared
def test_densenet_dice_checkpoint_loads_with_its_normalisation():
    model = load_model(need(CHECKPOINTS / "densenet100-cifar10-dice.pth.tar"), "densenet100", 10,
                       parse_normalization("cifar"))
    assert model.num_taps == 100 and model.normalization.name == "cifar"
    # A plain state dict gets its recipe's normalisation: CIFAR's for DenseNet-BC, ImageNet's for the others.
    assert load_model(CHECKPOINTS / "densenet100-cifar10-dice.pth.tar", "densenet100", 10).normalization.name == "cifar"
    assert create_model("vgg16").normalization.name == "imagenet"


class _Marker:
    created = False

    def __setstate__(self, state):   # what unpickling would run
        _Marker.created = True
