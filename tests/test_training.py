"""Training engine: batched augmentation, a real short run, exact resume, and torchrun with two processes."""
import contextlib
import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_backbone_model
from conftest import DATA, ROOT, need
from models import create_model, load_model
import utils.engine as engine
from utils.engine import (TrainConfig, average_state_dicts, crop_flip, epoch_generator, fit, recompute_batchnorm,
                          resolve_amp)
from utils.inputs import to_input


def test_crop_flip_matches_padding_and_flipping():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 32 * 32 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(2, 32, 32, 3) + 1
    out = crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    for i in range(2):   # every output is some crop of the padded image, flipped or not
        found = any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(1))
                    for oy in range(9) for ox in range(9) for c in [padded[i, oy:oy + 32, ox:ox + 32]])
        assert found
    crops = crop_flip(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(1))
    zero_rows = (crops == 0).all(dim=(2, 3)).any(dim=1)        # some crops show the zero padding
    assert 0 < zero_rows.float().mean() < 1


def _tiny_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 10, n))
    return (x, y), (x[:64].numpy(), y[:64].numpy())


def test_resume_continues_exactly(tmp_path):
    train, test = _tiny_data()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, weight_decay=5e-4, schedule="onecycle", max_batches=3)
    torch.manual_seed(0)
    straight = create_model("resnet20")
    fit(straight, train, test, cfg, tmp_path / "a", torch.device("cpu"), progress=False)

    class Stop(Exception):
        pass

    def stop_at_2(epoch):
        if epoch == 2:
            raise Stop
    torch.manual_seed(0)
    interrupted = create_model("resnet20")
    with pytest.raises(Stop):
        fit(interrupted, train, test, cfg, tmp_path / "b", torch.device("cpu"), on_epoch_start=stop_at_2,
            progress=False)
    torch.manual_seed(123)                     # a fresh process: different global state, same result
    resumed = create_model("resnet20")
    log = fit(resumed, train, test, cfg, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    a, b = load_model(tmp_path / "a" / "final.pt"), load_model(tmp_path / "b" / "final.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # The logs agree too, except for the measured speed.
    rows = lambda d: [{k: v for k, v in r.items() if k != "images_per_s"}  # noqa: E731
                      for r in csv.DictReader(open(tmp_path / d / "log.csv"))]
    assert rows("a") == rows("b") and len(rows("a")) == 3


@pytest.mark.shared
@pytest.mark.slow
def test_short_real_run_beats_chance(tmp_path):
    """ResNet-20, 3 one-cycle epochs on 2,000 real CIFAR-10 images, tested on 1,000.

    Chance is 10%; with 1,000 test images its standard deviation is 0.95 points, so 20% lies more than
    10 standard deviations above chance. Measured here: 28.2%.
    """
    need(DATA)
    args = train_backbone_model.get_args_parser().parse_args([
        "--model", "resnet20", "--source-root", str(DATA), "--data-root", str(tmp_path / "gen"),
        "--max-train", "2000", "--max-test", "1000", "--schedule", "onecycle", "--epochs", "3",
        "--batch-size", "64", "--lr", "0.2", "--out", str(tmp_path / "out")])
    log = train_backbone_model.main(args)
    assert log[-1]["test_acc"] > 20, log
    assert (tmp_path / "out" / "final.pt").exists() and (tmp_path / "out" / "log.csv").exists()
    header = (tmp_path / "out" / "log.csv").read_text().splitlines()[0]
    for col in ("epoch", "lr", "train_loss", "train_acc", "images_per_s", "test_acc"):
        assert col in header.split(",")

    # --init: a second run starts from those weights (a fresh model would test near chance after one
    # epoch at this tiny learning rate), and its checkpoint records where it started.
    second = train_backbone_model.main(train_backbone_model.get_args_parser().parse_args([
        "--model", "resnet20", "--source-root", str(DATA), "--data-root", str(tmp_path / "gen"),
        "--max-train", "2000", "--max-test", "1000", "--schedule", "constant", "--epochs", "1",
        "--batch-size", "64", "--lr", "0.0001", "--init", str(tmp_path / "out" / "final.pt"),
        "--out", str(tmp_path / "second")]))
    assert abs(second[0]["test_acc"] - log[-1]["test_acc"]) < 3, (second, log)
    saved = torch.load(tmp_path / "second" / "final.pt", weights_only=True)
    assert saved["config"]["init"] == str(tmp_path / "out" / "final.pt")

    # --average: the two runs' weights averaged, BatchNorm statistics recomputed, accuracy kept.
    ends = [tmp_path / "out" / "final.pt", tmp_path / "second" / "final.pt"]
    result = train_backbone_model.main(train_backbone_model.get_args_parser().parse_args([
        "--model", "resnet20", "--source-root", str(DATA), "--data-root", str(tmp_path / "gen"),
        "--max-train", "2000", "--max-test", "1000", "--average", *map(str, ends), "--out", str(tmp_path / "avg")]))
    assert abs(result["test_acc"] - log[-1]["test_acc"]) < 3, (result, log)
    averaged = torch.load(tmp_path / "avg" / "final.pt", weights_only=True)
    members = [torch.load(p, weights_only=True)["state_dict"] for p in ends]
    assert averaged["averaged_from"] == list(map(str, ends)) and averaged["batchnorm_images"] == 2000
    weight = next(k for k, v in averaged["state_dict"].items() if v.ndim == 4)      # the first convolution
    assert torch.allclose(averaged["state_dict"][weight], (members[0][weight] + members[1][weight]) / 2, atol=1e-6)
    bn_mean = next(k for k in averaged["state_dict"] if k.endswith("running_mean"))
    assert not torch.allclose(averaged["state_dict"][bn_mean], members[0][bn_mean])   # recomputed, not copied
    with pytest.raises(SystemExit, match="--out"):
        train_backbone_model.main(train_backbone_model.get_args_parser().parse_args([
            "--model", "resnet20", "--source-root", str(DATA), "--data-root", str(tmp_path / "gen"),
            "--max-train", "2000", "--max-test", "1000", "--average", *map(str, ends)]))


def test_average_state_dicts_is_the_mean_of_floats():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([4.0], dtype=torch.float16), "n": torch.tensor(9)}
    avg = average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and torch.equal(avg["h"], torch.tensor([3.0]))
    assert avg["h"].dtype == torch.float32 and torch.equal(avg["n"], torch.tensor(5))   # counters: the first's
    with pytest.raises(ValueError, match="one architecture"):
        average_state_dicts([a, {"w": torch.zeros(3), "h": a["h"], "n": a["n"]}])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])


def test_recompute_batchnorm_sets_the_mean_over_augmented_batches():
    """A BatchNorm on the input: its running mean and variance become the average, over the batches, of
    each augmented batch's per-channel mean and (unbiased) variance, whatever they were before."""
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (96, 8, 8, 3), dtype=np.uint8))
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    model[0].running_mean.fill_(7.0)
    model[0].running_var.fill_(9.0)
    assert recompute_batchnorm(model, images, torch.device("cpu"), batch_size=32, amp="off", seed=3,
                               progress=False) == 1
    g = epoch_generator(3, 0)
    order = torch.randperm(96, generator=g)
    batches = [to_input(crop_flip(images[order[s:s + 32]], g)) for s in range(0, 96, 32)]
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in batches]).mean(0)
    assert torch.allclose(model[0].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[0].running_var, var, atol=1e-4)
    assert not model.training and model[0].momentum == 0.1        # left as it was, in eval mode
    assert recompute_batchnorm(torch.nn.Linear(2, 2), images, torch.device("cpu"), progress=False) == 0

    # Class-sorted images (half dark, half bright, as generated sets are sorted by label): the variance must
    # be the whole set's, not the small variance inside one-class batches.
    # Measured: 1.10 of the unaugmented set's variance (the padding adds some); 0.37 in label order.
    sorted_images = torch.cat([torch.full((128, 32, 32, 3), 40, dtype=torch.uint8),
                               torch.full((128, 32, 32, 3), 200, dtype=torch.uint8)])
    recompute_batchnorm(model, sorted_images, torch.device("cpu"), batch_size=32, amp="off", progress=False)
    whole = to_input(sorted_images).transpose(0, 1).flatten(1).var(dim=1)
    assert torch.allclose(model[0].running_var, whole, rtol=0.2), (model[0].running_var, whole)


@pytest.mark.shared
def test_missing_training_data_is_a_clear_error(tmp_path):
    args = train_backbone_model.get_args_parser().parse_args([
        "--model", "resnet20", "--ind", "cifar100", "--source-root", str(need(DATA)),
        "--data-root", str(tmp_path / "gen")])
    with pytest.raises(FileNotFoundError, match=r"cifar100 \(train\): no source"):
        train_backbone_model.main(args)
    with pytest.raises(SystemExit):
        train_backbone_model.get_args_parser().parse_args(["--model", "vgg11"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.shared
@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "train_backbone_model.py"),
           "--model", "resnet20", "--source-root", str(need(DATA)), "--data-root", str(tmp_path / "gen"),
           "--max-train", "256", "--max-test", "100", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
           "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 2" in done.stderr                       # the stages log to stderr
    model = load_model(tmp_path / "ddp" / "final.pt")
    assert model.arch == "resnet20"


def test_amp_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch, tmp_path, caplog):
    """On a CPU without AVX512-BF16 or AMX, bfloat16 is emulated (5x slower there): auto must mean float32."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert resolve_amp(cpu, "auto")[0] == "off" and "float32" in resolve_amp(cpu, "auto")[1]
    assert engine.autocast(cpu, "auto")[0] is contextlib.nullcontext
    assert resolve_amp(cpu, "bf16")[0] == "bf16"                     # asked for explicitly: as asked
    train, test = _tiny_data()
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, weight_decay=5e-4, max_batches=1)
    with caplog.at_level("INFO", logger="utils.engine"):
        fit(create_model("resnet20"), train, test, cfg, tmp_path / "a", cpu, progress=False)
    assert "mixed precision: auto: float32 (the CPU has no native bfloat16" in caplog.text
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp(cpu, "auto")[0] == "bf16"


def test_native_bf16_probe_reads_the_cpu_flags():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    if flags:
        assert engine.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))
    else:
        assert isinstance(engine.cpu_has_native_bf16(), bool)


@pytest.mark.shared
@pytest.mark.slow
def test_gpu_run_smoke(tmp_path):
    """benchmarks/gpu_run.sh --smoke: every step of the GPU run, on the CPU at a tiny size, ends well and leaves
    the checkpoint, timing table, logs and environment files in $OUT."""
    need(DATA)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--smoke"], cwd=ROOT,
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings = (out / "timings.md").read_text()
    for step in ("train", "eval", "export", "speed", "features-vgg16", "features-resnet34", "features-densenet100",
                 "detectors", "detect", "score-speed"):
        assert f"| {step} |" in timings
    assert "FAILED" not in timings and "feature extraction" in timings
    half = load_model(out / "resnet34-cifar10-onecycle1-fp16.pt")
    assert half.arch == "resnet34" and (out / "resnet34-cifar10-onecycle1-log.csv").exists()
    assert torch.load(out / "resnet34-cifar10-onecycle1-fp16.pt", weights_only=True)["state_dict"]["linear.weight"].dtype \
        == torch.float16
    assert (out / "nvidia-smi.txt").exists() and "torch" in (out / "packages.txt").read_text()
