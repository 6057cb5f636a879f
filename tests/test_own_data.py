"""Your own data: a labelled folder (or zip) as the in-distribution set, at any image size, streamed."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import generate_datasets
import save_inter_outputs
from conftest import DATA, ROOT, need
from models import create_model
from utils.data import folder_source, load_subset, write_subset
from utils.features import load_features
from utils.generate import DataConfig, load_images
from utils.paths import Layout

DTD = DATA / "dtd-32x32-10-classes.zip"     # 10 classes of 120 images, in dtd/images/<class>/


@pytest.mark.shared
def test_a_folder_at_64x64_through_stages_1_and_2(tmp_path):
    """DTD's 10 classes as a labelled in-distribution set, split 75/25, made at 64x64 with every OOD set,
    then the features of a torchvision ResNet-18 trained for those 10 classes."""
    common = ["--ind", f"dtd10={need(DTD)}", "--test-fraction", "0.25", "--image-size", "64",
              "--source-root", str(DATA), "--data-root", str(tmp_path / "gen"), "--max-ood", "150"]
    made = generate_datasets.main(generate_datasets.get_args_parser().parse_args(common + ["--ood", "pure_color",
                                                                                            "cifar10"]))
    assert set(made) == {"train", "test", "pure_color", "cifar10"}
    tag = "trainall-testall-ood150-seed0-size64"
    train, labels, manifest = load_images(Layout(data_root=tmp_path / "gen"), "dtd10", tag, "train")
    assert train.shape == (900, 64, 64, 3) and manifest["settings"]["size"] == 64
    assert manifest["input_size"] == 64 and len(manifest["classes"]) == 10
    assert np.bincount(labels).tolist() == [90] * 10                    # stratified: 90 of each 120 train
    net = create_model("torchvision:resnet18", 10, taps="blocks")
    torch.save(net.net.state_dict(), tmp_path / "r18.pt")
    model = ["--checkpoint", str(tmp_path / "r18.pt"), "--model", "torchvision:resnet18", "--taps", "blocks",
             "--runs-root", str(tmp_path / "runs"), "--batch-size", "64"]
    run = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(common + model))
    feats = load_features(run, "test")
    assert [X.shape for X in feats["layers"]] == [(300, w) for w in (64, 64, 128, 128, 256, 256, 512, 512)]
    assert feats["manifest"]["input_size"] == 64 and feats["manifest"]["settings"]["images"]["size"] == 64
    # The classifier's head must fit the data's classes.
    torch.save(create_model("torchvision:resnet18", 7).net.state_dict(), tmp_path / "r18_7.pt")
    with pytest.raises(ValueError, match="7 classes, but 10 were expected"):
        save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
            common + model[:1] + [str(tmp_path / "r18_7.pt")] + model[2:]))


@pytest.mark.shared
def test_streamed_subsets_equal_the_in_memory_ones(tmp_path):
    source = folder_source(need(DTD), "dtd/images", size=48)
    images, labels = load_subset(source, 500, seed=3, progress=False)
    streamed = write_subset(source, 500, 3, tmp_path / "x.npy", size=48, progress=False, workers=2, chunk=64)
    assert np.array_equal(np.load(tmp_path / "x.npy", mmap_mode="r"), images) and np.array_equal(streamed, labels)


def test_bad_ind_names_write_nothing(tmp_path):
    for spec in ("../x=/tmp", "dtd=/tmp", "cifar11"):
        done = subprocess.run([sys.executable, "generate_datasets.py", "--ind", spec, "--data-root",
                               str(tmp_path / "gen")], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0 and "--ind" in done.stderr
    assert not (tmp_path / "gen").exists()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        DataConfig(ind="mine", ind_path=tmp_path / "missing").num_classes()
