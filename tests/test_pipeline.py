"""Stage scripts end to end on real data (small), reuse by content hash, and clear errors on bad input."""
import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch

import detect_oods
import generate_datasets
import run_pipeline
import save_inter_outputs
import train_ood_detectors
from conftest import CHECKPOINTS, DATA, need
from models import load_model
from utils.inputs import to_input
from utils.detection import DetectConfig, detect
from utils.detectors import LAOOD
from utils.extraction import extract, extract_with_nac
from utils.features import load_features
from utils.fitting import load_detectors, train_detectors
from utils.nac import nac_values

pytestmark = [pytest.mark.shared, pytest.mark.slow]   # real-data stage runs: the full suite; the quick tier has test_end_to_end

SMALL = ["--max-train", "600", "--max-test", "300", "--max-ood", "300"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The four stage scripts, in order, with the shared ResNet-20 on small real subsets."""
    root = tmp_path_factory.mktemp("run")
    common = ["--source-root", str(need(DATA)), "--data-root", str(root / "gen"), *SMALL]
    model = ["--checkpoint", str(need(CHECKPOINTS / "resnet20-cifar10-akamaster.th")), "--model", "resnet20",
             "--runs-root", str(root / "runs")]
    gen = generate_datasets.main(generate_datasets.get_args_parser().parse_args(
        common + ["--ood", "dtd", "pure_color"]))
    run = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
        common + model + ["--batch-size", "128", "--gram", "--nac"]))
    det = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(
        common + model + ["--jobs", "2", "--gammas", "0.01", "0.05", "0.1"]))
    summary = detect_oods.main(detect_oods.get_args_parser().parse_args(common + model + ["--jobs", "2"]))
    return {"root": root, "common": common, "model": model, "gen": gen, "run": run, "det": det, "summary": summary}


def test_stages_write_what_the_next_reads(small_run):
    assert set(small_run["gen"]) == {"train", "test", "dtd", "pure_color"}
    run = small_run["run"]
    train = load_features(run, "train")
    assert len(train["layers"]) == 20 and train["layers"][0].shape == (600, 16)
    assert train["layers"][0].dtype == np.float32 and isinstance(train["layers"][0], np.memmap)
    assert len(list(small_run["det"].glob("layer_*.npz"))) == 20
    assert (small_run["det"] / "selection.csv").exists()
    rows = {r["ood"]: r for r in small_run["summary"] if r["method"] == "LA-OOD"}
    assert set(rows) == {"dtd", "pure_color", "combined"}
    assert rows["pure_color"]["auroc"] > 90            # far-OOD: flat colours are easy for every layer
    assert rows["dtd"]["n"] == 300 and rows["combined"]["n"] == "300+600"
    res = run / "results" / "ocsvm-seed0"
    per_set = (res / "dtd.csv").read_text().splitlines()
    assert len(per_set) == 1 + 20 + 2 and per_set[-1].startswith("LA-OOD")
    record = json.loads((res / "run.json").read_text())
    assert record["checkpoint_sha256"].startswith(run.parent.name.split("-")[1])
    # The overview: AUROC per set with near (none here: dtd and pure_color are far), far and mean.
    overview = {r["method"]: r for r in csv.DictReader(open(res / "overview.csv"))}
    la = overview["LA-OOD"]
    assert la["near"] == "" and float(la["far"]) == pytest.approx((rows["dtd"]["auroc"] + rows["pure_color"]["auroc"]) / 2)
    assert "near = mean over none" in (res / "summary.md").read_text()
    assert "dtd" in record["sets"] and record["counts"]["test"] == 300
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.tmp"))


def test_extracted_features_equal_a_plain_forward(small_run, tmp_path):
    model = load_model(CHECKPOINTS / "resnet20-cifar10-akamaster.th", "resnet20")
    images = np.load(small_run["root"] / "gen" / "cifar10" / small_run["run"].name / "test" / "images.npy")[:40]
    extract(model, images, tmp_path, torch.device("cpu"), batch_size=16)
    with torch.no_grad():
        x = to_input(images)
        expected_first = model.conv1(x).mean(dim=(2, 3))
        expected_logits = model(x)
    np.testing.assert_allclose(np.load(tmp_path / "layer_000.npy"), expected_first.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "layer_019.npy"), expected_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected_logits.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("taps", [None, list(range(13, 20))])
def test_features_from_nacs_forward_equal_a_separate_extraction(small_run, tmp_path, taps):
    """With ``--nac`` stage 2 takes the features from NAC-UE's forward pass (``extract_with_nac``): the same
    files as the plain extraction, and the same NAC values as a pass of their own."""
    model = load_model(CHECKPOINTS / "resnet20-cifar10-akamaster.th", "resnet20")
    images = np.load(small_run["root"] / "gen" / "cifar10" / small_run["run"].name / "test" / "images.npy")[:40]
    cpu = torch.device("cpu")
    (tmp_path / "plain").mkdir()
    (tmp_path / "both").mkdir()
    extract(model, images, tmp_path / "plain", cpu, batch_size=16)
    values = extract_with_nac(model, images, tmp_path / "both", cpu, batch_size=16, taps=taps)
    files = sorted(p.name for p in (tmp_path / "plain").glob("*.npy"))
    assert len(files) == 22 and files == sorted(p.name for p in (tmp_path / "both").glob("*.npy"))
    for name in files:
        np.testing.assert_allclose(np.load(tmp_path / "both" / name), np.load(tmp_path / "plain" / name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(values, nac_values(model, images, cpu, 16, taps=taps), rtol=1e-5, atol=1e-9)
    assert values.shape == (40, sum(model.tap_widths[i] for i in (taps or range(20))))
    assert all(p.requires_grad for p in model.parameters())


def test_nac_on_some_taps_stores_those_taps_columns(small_run, tmp_path):
    """``--nac-taps``: the sets' NAC values are the chosen taps' columns of the every-tap values, and the
    manifest says which taps, so a later run with other taps recomputes rather than reusing."""
    run = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
        small_run["common"] + small_run["model"][:-1] + [str(tmp_path / "runs"), "--sets", "test",
                                                          "--nac-taps", "layer3.0.conv1:"]))
    some, every = load_features(run, "test"), load_features(small_run["run"], "test")
    assert some["nac_taps"] == list(range(13, 20)) and every["nac_taps"] == list(range(20))
    assert some["manifest"]["settings"]["nac_taps"] == list(range(13, 20))
    assert "nac_taps" not in every["manifest"]["settings"]             # every tap: the manifest as before
    widths = every["manifest"]["widths"]
    start = sum(widths[:13])
    assert some["nac_widths"] == widths[13:] and some["nac"].shape == (300, sum(widths[13:]))
    np.testing.assert_allclose(some["nac"], every["nac"][:, start:], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(some["layers"][4], every["layers"][4])   # the features themselves unchanged


def test_rerun_reuses_and_force_recomputes(small_run, caplog):
    args = save_inter_outputs.get_args_parser().parse_args(
        small_run["common"] + small_run["model"] + ["--gram", "--nac"])
    with caplog.at_level(logging.INFO, logger="utils.features"):
        save_inter_outputs.main(args)
    assert sum("already complete" in r.message for r in caplog.records) == 4


def test_bad_inputs(small_run, tmp_path):
    common, model = small_run["common"], small_run["model"]
    parse = detect_oods.get_args_parser().parse_args
    # Features missing for a set.
    with pytest.raises(FileNotFoundError, match="no features for set 'svhn'"):
        detect_oods.main(parse(common + model + ["--ood", "svhn"]))
    # Detectors made for another checkpoint: copy the run under another checkpoint's hash.
    other = tmp_path / "other.th"
    shutil.copy(CHECKPOINTS / "resnet20-cifar10-akamaster.th", other)
    with open(other, "ab") as f:
        f.write(b"\0")                                  # same weights file, different bytes
    with pytest.raises(FileNotFoundError, match="no features for set 'test'"):
        detect_oods.main(parse(common + ["--checkpoint", str(other), "--model", "resnet20",
                                         "--runs-root", model[-1]]))
    run = small_run["run"]
    forged = run.parent.parent / "resnet20-ffffffff" / run.name
    shutil.copytree(run, forged)
    manifest = forged / "features" / "test" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["settings"]["checkpoint_sha256"] = "f" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fitted on features of another checkpoint"):
        detect(forged, forged / "detectors" / "ocsvm-seed0", ["dtd"])
    # A detector missing for a layer.
    (forged / "detectors" / "ocsvm-seed0" / "layer_007.npz").unlink()
    with pytest.raises(ValueError, match=r"layer_007.npz is missing; rebuild the detectors with train_ood_detectors"):
        load_detectors(forged / "detectors" / "ocsvm-seed0")
    # Unknown model or set names fail at parse time.
    for bad in (["--model", "vgg19"], ["--ind", "svhn"], ["--detector", "lof"]):
        with pytest.raises(SystemExit):
            parse(common + model + bad)
    with pytest.raises(SystemExit):
        run_pipeline.get_args_parser().parse_args(["--checkpoint", "x", "--ood", "imagenet"])
    # Features with NaN.
    layer = np.load(forged / "features" / "train" / "layer_003.npy")
    layer[5, 2] = np.nan
    np.save(forged / "features" / "train" / "layer_003.npy", layer)
    before = sorted(p.name for p in (forged / "detectors").iterdir())
    with pytest.raises(ValueError, match="NaN"):
        train_detectors(forged, LAOOD(gammas=(0.05,), seed=7, n_jobs=1))
    assert sorted(p.name for p in (forged / "detectors").iterdir()) == before   # nothing half written
    # A truncated feature file: its name and the command that rebuilds it, not numpy's bare mmap message.
    cut = forged / "features" / "test" / "layer_005.npy"
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"layer_005.npy cannot be read .* rebuild it with save_inter_outputs.py "
                                         r"--sets test --force"):
        load_features(forged, "test")


def test_calibrated_detectors_add_the_calibrated_maximum_and_early_exit(small_run):
    common, model = small_run["common"], small_run["model"]
    extra = ["--jobs", "2", "--gammas", "0.01", "0.05", "0.1", "--calibration-size", "150"]
    det = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(common + model + extra))
    assert det.name == "ocsvm-cal150-seed0" and (det / "calibration.json").exists()
    summary = detect_oods.main(detect_oods.get_args_parser().parse_args(common + model + extra))
    methods = {r["method"] for r in summary if r["ood"] == "dtd"}
    assert {"LA-OOD", "LA-OOD (calibrated)", "early exit", "LA-OOD tail + Energy", "MSP", "KNN", "ViM", "ReAct",
            "LA-OOD tail + ViM", "LA-OOD tail + KNN", "LA-OOD tail + ReAct"} <= methods
    calib = json.loads((det / "calibration.json").read_text())
    assert calib["tail_level"] == 0.99 and len(calib["tail"]) == len(calib["mean"])
    exits = (small_run["run"] / "results" / "ocsvm-cal150-seed0" / "early_exit.csv").read_text().splitlines()
    assert exits[0].startswith("set,stopped_pct,mac_fraction") and len(exits) == 1 + 3   # test, dtd, pure_color
    for line in exits[1:]:
        assert 0 < float(line.split(",")[2]) <= 1


def test_spread_over_seeds(small_run):
    common, model = small_run["common"], small_run["model"]
    args = detect_oods.get_args_parser().parse_args(
        common + model + ["--jobs", "2", "--gammas", "0.01", "0.05", "0.1", "--seeds", "0", "1", "--methods", "LA-OOD",
                          "MSP"])
    rows = {(r["ood"], r["method"]): r for r in detect_oods.main(args)}
    la = rows[("dtd", "LA-OOD")]
    assert la["seeds"] == 2 and la["auroc_std"] >= 0
    per_seed = []
    for seed in (0, 1):
        text = (small_run["run"] / "results" / f"ocsvm-seed{seed}" / "summary.csv").read_text().splitlines()
        header = text[0].split(",")
        row = next(line.split(",") for line in text[1:] if line.startswith("dtd,LA-OOD,"))
        per_seed.append(float(row[header.index("auroc")]))
    assert la["auroc_mean"] == pytest.approx(np.mean(per_seed))
    assert la["auroc_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert (small_run["run"] / "results" / "ocsvm-seeds0-1" / "spread.md").exists()
    assert ("dtd", "best layer (oracle)") in rows
    # MSP does not depend on the detectors (computed once for both seeds); 300 test and 300 dtd images
    # are all used at every seed, so its spread is exactly zero.
    assert rows[("dtd", "MSP")]["seeds"] == 2 and rows[("dtd", "MSP")]["auroc_std"] == 0


def test_a_failing_summary_never_costs_the_fitted_detectors(small_run, monkeypatch):
    """The selection table is written after the detectors are in place; the figures after the tables."""
    from utils import detection, fitting

    def broken(path, rows):
        raise ValueError("dict contains fields not in fieldnames")
    monkeypatch.setattr(fitting, "write_csv", broken)
    la = LAOOD(gammas=(0.05, 0.1), seed=11, n_jobs=2)
    det = train_detectors(small_run["run"], la)
    assert len(load_detectors(det).detectors_) == 20 and not (det / "selection.csv").exists()
    monkeypatch.setattr(detection.plots, "roc_curves", lambda *a, **k: 1 / 0)
    rows = detect(small_run["run"], det, ["dtd", "pure_color"], DetectConfig(seed=11, methods=["LA-OOD", "Energy"]))
    res = small_run["run"] / "results" / "ocsvm-seed11"
    assert (res / "summary.csv").exists() and (res / "dtd.csv").exists() and {r["method"] for r in rows} == {
        "LA-OOD", "best layer (oracle)", "Energy"}


def test_every_method_is_in_the_tables(small_run):
    methods = {r["method"] for r in small_run["summary"] if r["ood"] == "dtd"}
    # Without --odin, ODIN is left out; without calibration, the calibrated LA-OOD variants are.
    assert methods == {"LA-OOD", "best layer (oracle)", "MSP", "Energy", "GEN", "ReAct", "ASH-S", "DICE", "ViM",
                       "Mahalanobis", "Mahalanobis (all layers)", "Gram", "KNN", "fDBD", "RMDS", "SCALE", "NCI",
                       "NNGuide", "NAC-UE (pytorch-ood)"}
    gram = {r["ood"]: r["auroc"] for r in small_run["summary"] if r["method"] == "Gram"}
    assert gram["pure_color"] > 90                     # flat colours break every Gram bound


def test_run_pipeline_checks_inputs_before_writing(tmp_path):
    parse = run_pipeline.get_args_parser().parse_args
    common = ["--source-root", str(need(DATA)), "--data-root", str(tmp_path / "gen"), "--runs-root", str(tmp_path / "r")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_pipeline.main(parse(common + ["--checkpoint", str(tmp_path / "missing.pt"), "--model", "vgg16"]))
    with pytest.raises(ValueError, match="not allowed"):
        run_pipeline.main(parse(common + ["--checkpoint", str(need(CHECKPOINTS / "vgg16-cifar10.pt")), "--model", "vgg16",
                                          "--extra-ood", f"../evil={DATA}"]))
    assert not (tmp_path / "gen").exists() and not (tmp_path / "r").exists()


def test_auto_and_approximate_detectors_through_the_stages(small_run):
    """--detector auto resolves (exact at this size) and says so; ocsvm-approx is saved, loaded and scored like
    the exact detector; --score-device scores the exact detectors with torch to the same tables."""
    common, model = small_run["common"], small_run["model"]
    flags = ["--jobs", "2", "--gammas", "0.01", "0.05", "0.1", "--methods", "LA-OOD", "Energy"]
    auto = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(
        common + model + flags[:5] + ["--detector", "auto"]))
    manifest = json.loads((auto / "manifest.json").read_text())
    assert auto.name == "ocsvm-seed0" and manifest["detector_choice"].startswith("auto: 600 fitting images")
    approx = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(
        common + model + flags[:5] + ["--detector", "ocsvm-approx"]))
    assert approx.name == "ocsvm-approx-seed0" and len(load_detectors(approx).detectors_) == 20
    # --landmarks: its own directory (never mixed with the default's), kept in the manifest, used by every layer.
    fewer = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(
        common + model + flags[:5] + ["--detector", "ocsvm-approx", "--landmarks", "64"]))
    assert fewer.name == "ocsvm-approx-m64-seed0"
    assert json.loads((fewer / "manifest.json").read_text())["settings"]["n_components"] == 64
    loaded = load_detectors(fewer)
    assert loaded.n_components == 64 and loaded.tag == fewer.name
    assert all(d[-1].components_.shape[0] == 64 for d in loaded.detectors_)
    rows = detect_oods.main(detect_oods.get_args_parser().parse_args(
        common + model + flags + ["--detector", "ocsvm-approx"]))
    assert {r["ood"] for r in rows if r["method"] == "LA-OOD"} >= {"dtd", "pure_color"}
    sklearn_rows = detect_oods.main(detect_oods.get_args_parser().parse_args(common + model + flags))
    torch_rows = detect_oods.main(detect_oods.get_args_parser().parse_args(
        common + model + flags + ["--score-device", "cpu"]))
    for a, b in zip(sklearn_rows, torch_rows):
        assert (a["ood"], a["method"]) == (b["ood"], b["method"]) and a["auroc"] == pytest.approx(b["auroc"], abs=1e-9)


def test_bfloat16_features_live_apart_and_stay_close(small_run):
    common, model = small_run["common"], small_run["model"]
    bf16 = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
        common + model + ["--precision", "bf16", "--sets", "test", "dtd"]))
    assert bf16.parent.name == small_run["run"].parent.name + "-bf16"
    for name in ("test", "dtd"):
        low, ref = load_features(bf16, name), load_features(small_run["run"], name)
        assert low["manifest"]["settings"]["precision"] == "bf16"
        assert "precision" not in ref["manifest"]["settings"]          # float32 runs keep their manifests
        agree = (np.asarray(low["logits"]).argmax(1) == np.asarray(ref["logits"]).argmax(1)).mean()
        assert agree > 0.95
        for a, b in zip(low["layers"], ref["layers"]):
            rel = np.abs(a - b).mean() / np.abs(b).mean()
            assert 0 < rel < 0.05                                      # bfloat16 moved them, a little
    with pytest.raises(ValueError, match="float32 only"):
        save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
            common + model + ["--precision", "bf16", "--odin", "--sets", "test"]))
