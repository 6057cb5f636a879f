"""generate_datasets.py: every source kind, resizing, subsets, pure_color and clear errors."""
import logging
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import generate_datasets
from conftest import DATA, ROOT, need
from utils.data import find_source, folder_source, load_subset, pure_color_source, subset_indices, to_32x32
from utils.sets import parse_extra, variant
from utils.generate import DataConfig, generate, load_images
from utils.paths import Layout


def _png(path, color, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _cifar10_pickles(root, n_per_batch=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(n_per_batch)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return d


def test_subsets_are_seeded_stratified_and_not_the_first_n():
    labels = np.repeat(np.arange(10), 100)            # sorted by class, like the archives
    idx = subset_indices(1000, 200, seed=0, labels=labels)
    assert len(idx) == 200 and len(set(idx)) == 200
    assert np.all(np.bincount(labels[idx], minlength=10) == 20)
    assert not np.array_equal(idx, np.arange(200))
    assert np.array_equal(idx, subset_indices(1000, 200, seed=0, labels=labels))
    assert not np.array_equal(idx, subset_indices(1000, 200, seed=1, labels=labels))
    # Uneven classes keep their proportions to within one image; unlabelled is a plain random subset.
    uneven = np.array([0] * 700 + [1] * 300)
    counts = np.bincount(uneven[subset_indices(1000, 101, 0, uneven)])
    assert counts.sum() == 101 and abs(counts[0] - 70.7) < 1 and abs(counts[1] - 30.3) < 1
    assert len(subset_indices(50, 10, 0)) == 10 and np.array_equal(subset_indices(50, None, 0), np.arange(50))


def test_resize_is_lanczos_straight_to_32():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    out = to_32x32(img)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(img.resize((32, 32), Image.LANCZOS)))
    gray = to_32x32(Image.new("L", (32, 32), 7))
    assert gray.shape == (32, 32, 3) and (gray == 7).all()


def test_pure_color_images_are_one_colour_each_and_seeded():
    src = pure_color_source(100, seed=3)
    images = src.load(np.arange(100))
    assert images.shape == (100, 32, 32, 3)
    assert (images == images[:, :1, :1, :]).all()
    assert len({tuple(c) for c in images[:, 0, 0]}) > 90
    assert np.array_equal(images, pure_color_source(100, seed=3).load(np.arange(100)))


def test_folder_and_zip_sources_agree(tmp_path):
    for cls, color in (("a", (255, 0, 0)), ("b", (0, 255, 0))):
        for i in range(3):
            _png(tmp_path / "imgs" / cls / f"{i}.png", color, size=(40, 40))
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for p in sorted((tmp_path / "imgs").rglob("*.png")):
            z.write(p, "set/" + p.relative_to(tmp_path / "imgs").as_posix())
    folder, archive = folder_source(tmp_path / "imgs"), folder_source(tmp_path / "imgs.zip", "set")
    assert folder.classes == archive.classes == ["a", "b"]
    assert np.array_equal(folder.labels, [0, 0, 0, 1, 1, 1])
    assert np.array_equal(folder.load(np.arange(6)), archive.load(np.arange(6)))
    assert folder.load([0]).shape == (1, 32, 32, 3)


def test_torchvision_layouts(tmp_path):
    _cifar10_pickles(tmp_path)
    src, _ = find_source("cifar10", "train", [tmp_path])
    assert src.count == 20 and src.classes[0] == "c0"
    test, _ = find_source("cifar10", "test", [tmp_path])
    assert test.count == 4 and test.load(np.arange(4)).shape == (4, 32, 32, 3)
    from scipy.io import savemat
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4]])})
    svhn, _ = find_source("svhn", "test", [tmp_path])
    assert np.array_equal(svhn.labels, [0, 1, 2, 3, 4])
    assert np.array_equal(svhn.load(np.array([2]))[0], x[..., 2])
    _png(tmp_path / "dtd" / "dtd" / "images" / "banded" / "x.jpg", (1, 2, 3), size=(300, 200))
    dtd, _ = find_source("dtd", "test", [tmp_path])
    assert dtd.count == 1 and dtd.classes == ["banded"]
    for i in range(3):
        _png(tmp_path / "LSUN" / "test" / f"{i}.jpg", (9, 9, 9), size=(36, 36))
        _png(tmp_path / "tiny-imagenet-200" / "test" / "images" / f"test_{i}.JPEG", (5, 5, 5), size=(64, 64))
    lsun, _ = find_source("lsun", "test", [tmp_path])
    tiny, _ = find_source("tiny", "test", [tmp_path])
    assert lsun.count == tiny.count == 3 and lsun.labels is None


def test_generate_writes_sets_skips_missing_and_reuses(tmp_path, caplog):
    _cifar10_pickles(tmp_path / "raw")
    for i in range(5):
        _png(tmp_path / "extra" / f"{i}.png", (i, i, i))
    cfg = DataConfig(ind="cifar10", oods=["svhn", "pure_color"], extra=parse_extra([f"mine={tmp_path / 'extra'}"]),
                     roots=[tmp_path / "raw"], max_ood=7, seed=0)
    layout = Layout(tmp_path / "gen", tmp_path / "runs")
    with caplog.at_level(logging.INFO, logger="utils.generate"):
        done = generate(cfg, layout)
    assert set(done) == {"train", "test", "pure_color", "mine"}
    assert any(r.message.startswith("skipping svhn") and "test_32x32.mat" in r.message for r in caplog.records)
    images, labels, manifest = load_images(layout, "cifar10", cfg.tag, "pure_color")
    assert images.shape == (7, 32, 32, 3) and manifest["count"] == 7
    assert load_images(layout, "cifar10", cfg.tag, "train")[0].shape == (20, 32, 32, 3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.generate"):
        generate(cfg, layout)
    assert sum("already complete" in r.message for r in caplog.records) == 4


def test_bad_inputs_give_clear_errors(tmp_path):
    layout = Layout(tmp_path / "gen", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=r"in-distribution set cifar10 \(train\).*cifar-10-batches-py"):
        generate(DataConfig(roots=[tmp_path]), layout)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        folder_source(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot read image .*x\.png"):
        folder_source(tmp_path / "bad").load([0])
    (tmp_path / "cifar10.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a valid zip"):
        find_source("cifar10", "test", [tmp_path])
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_extra(["nopath"])
    with pytest.raises(ValueError, match="reserved"):
        parse_extra(["train=/x"])
    with pytest.raises(ValueError, match="unknown dataset"):
        find_source("imagenet", "test", [tmp_path])
    with pytest.raises(SystemExit):
        generate_datasets.get_args_parser().parse_args(["--ind", "mnist"])


def test_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(tvd, "SVHN", offline)
    from utils.data import download_source
    with pytest.raises(RuntimeError, match="could not download svhn .* put its files under a --source-root"):
        download_source("svhn", "test", tmp_path)


@pytest.mark.shared
def test_shared_archives_read_in_place():
    src, _ = find_source("cifar10", "test", [need(DATA)])
    assert src.count == 10000 and src.classes[0] == "airplane" and src.classes[-1] == "truck"
    images, labels = load_subset(src, 50, seed=0)
    assert images.shape == (50, 32, 32, 3) and np.all(np.bincount(labels) == 5)
    tiny, _ = find_source("tiny", "test", [DATA])
    assert tiny.count == 10000 and tiny.labels is None
    dtd, _ = find_source("dtd", "test", [DATA])
    assert dtd.count == 1200 and len(dtd.classes) == 10
    c100, _ = find_source("cifar100", "test", [DATA])
    assert c100.count == 10000 and len(c100.classes) == 100
    lsun, _ = find_source("lsun", "test", [DATA])
    assert lsun.count == 10000 and lsun.description.endswith("lsun-resize.zip:LSUN_resize")
    assert variant("lsun", lsun.description) == "resize" and variant("lsun", "data/LSUN") == "crop"
    assert lsun.load([0]).shape == (1, 32, 32, 3)


def test_unsafe_set_names_are_refused_before_anything_is_written(tmp_path):
    for bad in ("../x", "a/b", "x y", ".hidden"):
        with pytest.raises(ValueError, match="not allowed"):
            parse_extra([f"{bad}={tmp_path}"])
    assert parse_extra([f"my-set_2={tmp_path}"]) == {"my-set_2": tmp_path}
    gen = tmp_path / "gen"
    done = subprocess.run([sys.executable, "generate_datasets.py", "--extra-ood", f"../x={tmp_path}", "--source-root",
                           str(tmp_path), "--data-root", str(gen)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "'../x' is not allowed" in done.stderr
    assert not gen.exists()
