"""Any network as a backbone (torchvision:, timm:, module:factory), tapped by module-name patterns."""
import argparse

import numpy as np
import pytest
import torch

import generate_datasets
import save_inter_outputs
from conftest import CHECKPOINTS, DATA, need
from models import create_model, load_model
from models.generic import run_name, select_taps
from utils.cli import model_arg
from utils.features import load_features

SMALL = ["--max-train", "200", "--max-test", "100", "--max-ood", "100"]


@pytest.mark.shared
def test_generic_path_is_the_registry_mechanism(tmp_path):
    """The shared ResNet-56 through module:factory with the registry's tap names as patterns gives the
    features of --model resnet56, bit for bit, through the stage script."""
    ckpt = str(need(CHECKPOINTS / "resnet56-cifar10-akamaster.th"))
    common = ["--source-root", str(need(DATA)), "--data-root", str(tmp_path / "gen"), *SMALL]
    generate_datasets.main(generate_datasets.get_args_parser().parse_args(common + ["--ood", "dtd"]))
    taps = ",".join(name for name in create_model("resnet56").tap_names)
    runs = {}
    for label, model in (("registry", ["--model", "resnet56"]),
                         ("generic", ["--model", "models.resnet:resnet56", "--taps", taps])):
        runs[label] = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
            common + model + ["--checkpoint", ckpt, "--runs-root", str(tmp_path / label), "--batch-size", "100"]))
    assert runs["generic"].parent.name.startswith("models-resnet-resnet56-t")
    for name in ("train", "test", "dtd"):
        a, b = load_features(runs["registry"], name), load_features(runs["generic"], name)
        assert len(a["layers"]) == len(b["layers"]) == 56
        for x, y in zip(a["layers"] + [a["logits"], a["penultimate"]], b["layers"] + [b["logits"], b["penultimate"]]):
            assert np.array_equal(x, y)
        assert b["manifest"]["settings"]["tap_names"][0] == "net.conv1"


def test_torchvision_taps_by_pattern_and_preset():
    blocks = create_model("torchvision:resnet18", 10, taps="blocks")
    assert blocks.tap_names == [f"net.layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert blocks.tap_widths == [64, 64, 128, 128, 256, 256, 512, 512] and blocks.head_name == "net.fc"
    convs = create_model("torchvision:resnet18", 10, taps="convs")
    assert convs.num_taps == 20 and convs.tap_names[0] == "net.conv1"     # 17 3x3/7x7 + 3 downsample 1x1
    chosen = create_model("torchvision:resnet18", 10, taps="layer*.*.conv2,fc")
    assert chosen.num_taps == 9 and chosen.tap_widths[-1] == 10
    out = chosen.forward_intermediates(torch.zeros(2, 3, 64, 64), penultimate=True)
    assert [f.shape for f in out.features][-1] == (2, 10) and out.penultimate.shape == (2, 512)
    cumulative, total = blocks.tap_macs()
    assert cumulative == sorted(cumulative) and cumulative[-1] < total


def test_generic_checkpoint_round_trip(tmp_path):
    net = create_model("torchvision:resnet18", 10, taps="blocks")
    torch.save(net.net.state_dict(), tmp_path / "plain.pt")                 # the network's own keys
    again = load_model(tmp_path / "plain.pt", "torchvision:resnet18", 10, taps="blocks")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net.eval()(x), again(x))


def test_bad_model_specs_are_clear():
    with pytest.raises(ValueError, match="matched no module"):
        select_taps(create_model("torchvision:resnet18", 10).net, "layer9.*")
    with pytest.raises(ValueError, match="--taps applies to"):
        create_model("resnet20", 10, taps="layer1.*")
    with pytest.raises(ValueError, match="cannot import"):
        create_model("no_such_package.nets:build", 10)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown model"):
        model_arg("resnet99")
    assert run_name("resnet56", None) == "resnet56"
    assert run_name("torchvision:resnet18", "blocks") != run_name("torchvision:resnet18", "convs")


def test_generic_checkpoint_records_its_taps_and_head(tmp_path):
    """A checkpoint saved from a tapped network carries its taps and head, so later stages need no --taps."""
    from utils.io import save_checkpoint
    net = create_model("torchvision:resnet18", 10, taps="layer4.*.conv2,fc", head="fc")
    save_checkpoint(net, tmp_path / "t.pt")
    again = load_model(tmp_path / "t.pt")
    assert again.tap_names == net.tap_names and again.head_name == "net.fc"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net.eval()(x), again(x))
    assert load_model(tmp_path / "t.pt", taps="blocks").num_taps == 8     # a flag still overrides it
