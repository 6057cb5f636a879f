"""Every stage, 0 to 5, on data the test makes itself: needs nothing beside the repository.

A toy in-distribution set (three classes, each noise around its own colour), a seeded uniform-noise OOD folder,
pure colours and a small SVHN file in torchvision's layout; a ResNet-20 trained for a few batches.
"""
import csv
import json
import warnings

import numpy as np
import pytest
import torch
from scipy.io import savemat

import co_train
import detect_oods
import generate_datasets
import run_pipeline
import save_inter_outputs
import train_backbone_model
import train_ood_detectors
from conftest import image_folder
from models import load_model
from utils.features import load_features
from utils.fitting import load_detectors


def _noise_folder(root, n=24, seed=1):
    from PIL import Image
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _svhn_file(root, n=20, seed=2):
    """torchvision's ``test_32x32.mat``: X (32, 32, 3, n) uint8, y (n, 1) with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    savemat(root / "test_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                      "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    ind = image_folder(root / "toy", classes=3, per_class=40, seed=0)
    data = ["--ind", f"toy={ind}", "--source-root", str(_svhn_file(root / "raw")), "--data-root", str(root / "gen"),
            "--max-ood", "40"]
    sets = ["--ood", "svhn", "pure_color", "--extra-ood", f"noise={_noise_folder(root / 'noise')}"]
    # Stage 0: a few batches of training make a checkpoint that records its architecture and classes.
    train_backbone_model.main(train_backbone_model.get_args_parser().parse_args(
        data + ["--model", "resnet20", "--out", str(root / "backbone"), "--schedule", "constant", "--epochs", "1",
                "--batch-size", "20", "--lr", "0.05", "--device", "cpu"]))
    checkpoint = root / "backbone" / "final.pt"
    model = data + ["--checkpoint", str(checkpoint), "--runs-root", str(root / "runs"), "--device", "cpu"]
    detectors = ["--jobs", "1", "--gammas", "0.01", "0.1", "--calibration-size", "30"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a user reads a warning as trouble: the stages raise none
        gen = generate_datasets.main(generate_datasets.get_args_parser().parse_args(data + sets))
        run = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
            model + ["--batch-size", "32", "--gram", "--nac"]))
        det = train_ood_detectors.main(train_ood_detectors.get_args_parser().parse_args(model + detectors))
        summary = detect_oods.main(detect_oods.get_args_parser().parse_args(model + detectors))
    return {"root": root, "data": data, "sets": sets, "model": model, "detectors": detectors,
            "checkpoint": checkpoint, "gen": gen, "run": run, "det": det, "summary": summary}


def test_stages_0_to_4_write_what_the_next_reads(toy):
    assert set(toy["gen"]) == {"train", "test", "svhn", "pure_color", "noise"}
    assert toy["gen"]["svhn"]["count"] == 20 and toy["gen"]["train"]["classes"] == ["class0", "class1", "class2"]
    saved = torch.load(toy["checkpoint"], weights_only=True)
    assert saved["arch"] == "resnet20" and saved["num_classes"] == 3
    train = load_features(toy["run"], "train")
    assert len(train["layers"]) == 20 and train["layers"][0].shape == (120, 16)
    assert train["logits"].shape == (120, 3) and np.isfinite(train["nac"]).all()
    la = load_detectors(toy["det"])
    assert len(la.detectors_) == 20 and la.calibration_size == 30
    rows = {(r["ood"], r["method"]): r for r in toy["summary"]}
    for name in ("svhn", "pure_color", "noise"):
        assert rows[(name, "LA-OOD")]["n"] == {"svhn": 20, "pure_color": 40, "noise": 24}[name]
        for method in ("LA-OOD", "LA-OOD tail + Energy", "Energy", "KNN", "Gram", "NAC-UE (pytorch-ood)"):
            assert 0 <= rows[(name, method)]["auroc"] <= 100
    # SVHN joins the overview as a far-OOD set; no near set was made.
    res = toy["run"] / "results" / toy["det"].name
    overview = {r["method"]: r for r in csv.DictReader(open(res / "overview.csv"))}
    far = [rows[(n, "LA-OOD")]["auroc"] for n in ("svhn", "pure_color", "noise")]
    assert overview["LA-OOD"]["near"] == "" and float(overview["LA-OOD"]["far"]) == pytest.approx(np.mean(far))
    assert sorted(p.name for p in res.glob("*.png"))       # the figures were drawn


def test_the_pipeline_script_reuses_every_stage(toy, caplog):
    """run_pipeline.py with the stages' flags finds their outputs complete and recomputes nothing."""
    import logging
    args = run_pipeline.get_args_parser().parse_args(toy["model"] + toy["sets"] + toy["detectors"]
                                                     + ["--batch-size", "32", "--gram", "--nac"])
    with caplog.at_level(logging.INFO):
        rows = run_pipeline.main(args)
    assert sum("already complete" in r.message for r in caplog.records) >= 5 + 5      # images and features
    assert {(r["ood"], r["method"], r["auroc"]) for r in rows} == \
        {(r["ood"], r["method"], r["auroc"]) for r in toy["summary"]}


def test_stage_5_co_trains_from_the_fitted_detectors(toy):
    out = toy["root"] / "cotrained"
    rows = co_train.main(co_train.get_args_parser().parse_args(
        toy["model"] + ["--calibration-size", "30", "--epochs", "1", "--batch-size", "20", "--max-batches", "2", "--lam", "1", "--out", str(out)]))
    assert len(rows) == 1 and 0 <= rows[0]["test_acc"] <= 100
    before = load_model(toy["checkpoint"])
    after = load_model(out / "final.pt")
    assert after.num_taps == before.num_taps == 20
    changed = [name for name, p in after.state_dict().items()
               if p.dtype.is_floating_point and not torch.equal(p, before.state_dict()[name])]
    assert changed                                                # the backbone moved


def test_tune_searches_on_the_validation_split_only_and_evaluates_the_rest(toy, monkeypatch):
    import json

    import utils.detection as detection
    from utils.tuning import VAL_IN, VAL_OUT, validation_split
    seen, real = [], detection.search
    monkeypatch.setattr(detection, "search", lambda names, val: seen.append(val) or real(names, val))
    detect_oods.main(detect_oods.get_args_parser().parse_args(
        toy["model"] + toy["detectors"] + ["--tune", "--tune-ood", "noise", "--tune-size", "6"]))
    test, noise = load_features(toy["run"], "test"), load_features(toy["run"], "noise")
    val_in, val_out = validation_split(test["labels"], len(noise["logits"]), 0, 6)
    (val,) = seen                                    # one search, on the validation images and nothing else
    assert set(val.sets) == {VAL_IN, VAL_OUT} and set(val.layer_scores) == {VAL_IN, VAL_OUT}
    np.testing.assert_array_equal(val.sets[VAL_IN]["penultimate"], test["penultimate"][val_in])
    np.testing.assert_array_equal(val.sets[VAL_OUT]["penultimate"], noise["penultimate"][val_out])
    res = toy["run"] / "results" / f"{toy['det'].name}-tuned"
    record = json.loads((res / "run.json").read_text())
    assert record["counts"] == {"test": len(test["logits"]) - 6, "noise": len(noise["logits"]) - 6, "svhn": 20,
                                "pure_color": 40}
    tuning = json.loads((res / "tuning.json").read_text())
    assert {"Energy", "KNN", "ReAct", "LA-OOD tail + Energy"} <= set(tuning)
    assert set(record["tuned"]) == set(tuning) and record["validation"]["noise"] == "6 images"
    for name, found in tuning.items():
        assert found["val_auroc"] == max(p["auroc"] for p in found["points"]) >= found["default_val_auroc"]
    tuned = {r["method"]: r for r in csv.DictReader(open(res / "tuned_overview.csv"))}
    default = {r["method"]: r for r in csv.DictReader(open(res / "overview.csv"))}
    assert tuned["LA-OOD"] == default["LA-OOD"] and tuned["MSP"] == default["MSP"]   # nothing to tune
    assert "Tuned on the validation split" in (res / "summary.md").read_text()
    # Both tables carry a paired bootstrap whose point estimates are their AUROCs, and the order it gives.
    from utils.bootstrap import Draws
    for npz, overview, margins in (("bootstrap.npz", default, "margins.csv"), ("tuned_bootstrap.npz", tuned,
                                                                             "tuned_margins.csv")):
        draws = Draws.load(res / npz)
        assert draws.draws.shape == (len(draws.methods), 3, 1000) and set(draws.sets) == {"noise", "svhn", "pure_color"}
        for m in draws.methods:
            for s in draws.sets:
                assert draws.column(m, [s])[0] == pytest.approx(float(overview[m][s]))
        order = {r["column"]: r for r in csv.DictReader(open(res / margins))}
        assert set(order) == {"noise", "svhn", "pure_color", "far", "mean"}
        best = max(draws.methods, key=lambda m: float(overview[m]["far"]))
        assert float(overview[order["far"]["first"]]["far"]) == float(overview[best]["far"])
        assert (order["far"]["order"] == "tied") == bool(order["far"]["tied with"])
    # collect_results.py --tuned gathers both tables.
    import collect_results
    rows = collect_results.main(collect_results.get_args_parser().parse_args(
        ["--models", "resnet20", "--tuned", "--run", f"resnet20={res}", "--out-root", str(toy["root"] / "collected")]))
    by_method = {r["method"]: r for r in rows}
    assert by_method["MSP"]["far (defaults)"] == by_method["MSP"]["far (tuned)"] and np.isnan(by_method["MSP"]["near (tuned)"])
    assert by_method["KNN"]["far (tuned)"] == pytest.approx(float(tuned["KNN"]["far"]))
    assert (toy["root"] / "collected" / "tuned_table.md").exists()
    order = list(csv.DictReader(open(toy["root"] / "collected" / "tuned_order.csv")))
    assert [(r["table"], r["mean"]) for r in order] == [("defaults", "far"), ("tuned", "far")]
    for r in order:          # the first is the largest far mean, or a tie that names it first
        table = default if r["table"] == "defaults" else tuned
        top = max(float(v["far"]) for m, v in table.items() if m != "best layer (oracle)")
        assert float(r["auroc"]) == pytest.approx(top)
        if float(r["margin [95%]"].split("[")[1].split(",")[0]) <= 0:     # the runner-up's interval holds 0
            assert r["runner-up"] in r["first"].split("; tied: ")[1]


def test_the_paper_table_puts_two_in_distribution_sets_side_by_side(toy):
    import collect_results
    res = toy["run"] / "results" / toy["det"].name
    rows = collect_results.main(collect_results.get_args_parser().parse_args(
        ["--models", "resnet20", "--ind", "toy", "copy", "--run", f"toy:resnet20={res}", "--run",
         f"copy:resnet20={res}", "--out-root", str(toy["root"] / "collected")]))
    summary = {(r["ood"], r["method"]): r for r in csv.DictReader(open(res / "summary.csv"))}
    assert [r["OOD set"] for r in rows] == ["svhn", "pure_color", "noise"]
    for r in rows:
        la = summary[r["OOD set"], "LA-OOD"]
        assert r["toy: LA-OOD AUROC"] == r["copy: LA-OOD AUROC"] == pytest.approx(float(la["auroc"]))
        assert r["toy: tail + Energy AUROC"] == pytest.approx(float(summary[r["OOD set"], "LA-OOD tail + Energy"]["auroc"]))


def test_tune_seeds_repeat_the_tuned_tables_over_validation_splits(toy):
    import json
    detect_oods.main(detect_oods.get_args_parser().parse_args(
        toy["model"] + toy["detectors"] + ["--tune-seeds", "0", "1", "--tune-ood", "noise", "--tune-size", "6",
                                           "--resamples", "50"]))
    results = toy["run"] / "results"
    per_split = {0: results / f"{toy['det'].name}-tuned", 1: results / f"{toy['det'].name}-tuned-split1"}
    records = {s: json.loads((d / "run.json").read_text()) for s, d in per_split.items()}
    assert [records[s]["validation"]["seed"] for s in (0, 1)] == [0, 1]
    spread = results / f"{toy['det'].name}-tuned-splits0-1"
    choices = json.loads((spread / "tuning.json").read_text())["chosen per split"]
    assert set(choices) == {"0", "1"}
    for s, d in per_split.items():
        assert choices[str(s)] == records[s]["tuned"]
    rows = {(r["table"], r["method"]): r for r in csv.DictReader(open(spread / "spread.csv"))}
    tuned = {s: {r["method"]: r for r in csv.DictReader(open(d / "tuned_overview.csv"))} for s, d in per_split.items()}
    for method in ("KNN", "LA-OOD tail + Energy"):
        values = [float(tuned[s][method]["far"]) for s in (0, 1)]
        assert float(rows["tuned", method]["far"]) == pytest.approx(np.mean(values))
        assert float(rows["tuned", method]["far sd"]) == pytest.approx(np.std(values, ddof=1))
    assert "mean ± sd over validation splits 0, 1" in (spread / "spread.md").read_text()


def test_the_near_far_grid_marks_each_backbones_best():
    import collect_results
    rows = [{"model": m, "method": x, "near (tuned)": near, "far (tuned)": far}
            for m, x, near, far in [("vgg16", "A", 80.0, 99.0), ("vgg16", "B", 85.0, 90.0), ("resnet20", "A", 70.0, 95.0)]]
    lines = collect_results.near_far_grid(rows, "tuned").splitlines()
    assert lines[0] == "| method | vgg16 | resnet20 |"
    assert lines[2] == "| A | 80.00 / **99.00** | **70.00** / **95.00** |"
    assert lines[3] == "| B | **85.00** / 90.00 |  |"
    # With the bootstrap's leaders every method tied with the first is bold, and a larger value that is not a
    # leader (impossible from one bootstrap, here to show which rule is followed) is not.
    lead = {("vgg16", "tuned", "near"): {"A", "B"}, ("vgg16", "tuned", "far"): {"B"}}
    lines = collect_results.near_far_grid(rows, "tuned", lead).splitlines()
    assert lines[2] == "| A | **80.00** / 99.00 | **70.00** / **95.00** |"
    assert lines[3] == "| B | **85.00** / **90.00** |  |"


def test_every_method_table_bolds_the_first_and_the_methods_tied_with_it(toy):
    import collect_results
    from utils.bootstrap import Draws
    from utils.tables import margin_rows
    res = toy["run"] / "results" / toy["det"].name
    out = toy["root"] / "collected-every"
    rows = collect_results.main(collect_results.get_args_parser().parse_args(
        ["--models", "resnet20", "--every-method", "--run", f"resnet20={res}", "--out-root", str(out)]))
    overview = {r["method"]: r for r in csv.DictReader(open(res / "overview.csv"))}
    assert {r["method"] for r in rows} == set(overview)
    for r in rows:
        assert r["far"] == pytest.approx(float(overview[r["method"]]["far"]))
    near = json.loads((res / "run.json").read_text())["near"]
    order = {r["column"]: r for r in margin_rows(Draws.load(res / "bootstrap.npz"), near,
                                                 lambda m: not m.startswith("LA-OOD"))}
    text = (out / "every_method.md").read_text()
    table = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    header = table.pop("method")
    header[-1] = header[-1].rstrip(" |")
    far = header.index("far")
    tied = set(filter(None, order["far"]["tied with"].split("; "))) | set(filter(None, order["far"]["same as"].split("; ")))
    for method, cells in table.items():
        bold = cells[far].startswith("**")
        assert bold == (method == order["far"]["first"] or method in tied), method
    assert "- far: " in text


def test_a_new_producer_is_one_registered_class(toy):
    """The docs' example: a producer registered at run time gets its flag, runs in stage 2, loads with the
    features and meets a method's need."""
    from utils import methods, producers
    from utils.paths import LOGITS
    from utils.producers.base import _PRODUCERS
    from utils.io import load_array

    @producers.register_producer
    class MaxLogitProducer(producers.Producer):
        name, help = "max_logit", "also store each image's largest logit"

        def compute(self, ctx, images, labels, out, fused):
            np.save(out / "max_logit.npy", np.load(out / LOGITS, mmap_mode="r").max(1))

        def load(self, d, manifest, out, rebuild):
            if (d / "max_logit.npy").exists():
                out["max_logit"] = load_array(d / "max_logit.npy", rebuild)

    @methods.register_method("max logit (producer test)", ["max_logit"])
    def _stored(inp):
        return inp.each(lambda f: -f["max_logit"])
    try:
        run = save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(
            toy["model"] + ["--batch-size", "32", "--max-logit", "--sets", "train", "test", "noise"]))
        noise = load_features(run, "noise")
        np.testing.assert_array_equal(noise["max_logit"], noise["logits"].max(1))
        assert noise["manifest"]["settings"]["max_logit"] is True
        inputs = methods.Inputs(train=load_features(run, "train"), sets={"noise": noise})
        assert "max_logit" in inputs.available()
        np.testing.assert_allclose(methods.get_method("max logit (producer test)").score(inputs)["noise"],
                                   -noise["logits"].max(1))
    finally:
        _PRODUCERS.pop("max_logit")
        methods._METHODS.pop("max logit (producer test)")


def test_nac_stages_are_added_beside_finished_features_and_scored(toy):
    """--nac-stages on a finished run computes only NAC-UE's stage values (the features stay as they are), and
    NAC-UE (authors) joins the tables."""
    flags = toy["model"] + ["--batch-size", "32", "--gram", "--nac", "--sets", "train", "test", "noise", "svhn",
                            "pure_color"]
    save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(flags))   # the features as the toy's
    before = (toy["run"] / "features" / "test" / "manifest.json").read_text()
    save_inter_outputs.main(save_inter_outputs.get_args_parser().parse_args(flags + ["--nac-stages"]))
    assert (toy["run"] / "features" / "test" / "manifest.json").read_text() == before
    train, noise = load_features(toy["run"], "train"), load_features(toy["run"], "noise")
    assert train["nac_stages_fit"]["names"] == ["layer3", "layer2", "layer1"]          # deepest first
    assert [a.shape[1] for a in noise["nac_stages"]["stages"]] == [64, 32, 16]
    assert len(noise["nac_stages"]["stages"][0]) == len(noise["logits"])
    summary = detect_oods.main(detect_oods.get_args_parser().parse_args(
        toy["model"] + toy["detectors"] + ["--methods", "NAC-UE (authors)", "Energy"]))
    assert {r["method"] for r in summary} >= {"NAC-UE (authors)", "Energy"}
    assert all(0 <= r["auroc"] <= 100 for r in summary if r["method"] == "NAC-UE (authors)")
