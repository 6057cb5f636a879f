"""The GPU path in one prepared run: train ResNet34, extract features of three backbones, detect with torch scoring.

    OUT=/tmp/gpu bash benchmarks/gpu_run.sh                 # on a CUDA machine, under 10 minutes on one H200
    bash benchmarks/gpu_run.sh --smoke                     # the same steps on the CPU at a tiny size (tested)

Steps, each a stage script in its own process with its log under ``<out>/logs/``, timed; a failed step is
recorded and the independent ones after it still run (their outputs are kept):

1. ``train``: ResNet34 on CIFAR-10, one-cycle SGD (``--epochs``, batch ``--batch-size``, peak ``--lr``), bf16
   autocast, channels-last, the images moved to the device once and augmented there as a batch;
   ``eval`` then reports its float32 test accuracy, and ``export`` writes the float16 checkpoint beside its log.
2. ``speed``: the bare forward pass against feature extraction (``benchmarks/feature_speed.py``), side by side
   in one process, for VGG16, ResNet34 and DenseNet100; the ratio is the figure.
3. ``features-<model>``: stage 2 for VGG16 (shared), the ResNet34 just trained and DenseNet100 (shared, DICE).
4. ``detectors`` and ``detect``: stages 3-4 on VGG16 with ``--score-device``, and ``score-speed``: the detectors'
   own scoring (NumPy, float64, on the CPU) against torch on the device (``benchmarks/score_speed.py``).

Everything lands in ``<out>`` (``$OUT`` when set, else ``--out``): the checkpoint, ``timings.md``, the logs,
``nvidia-smi.txt`` and ``packages.txt``.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from utils.io import export_half, write_text

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
VGG16 = SHARED / "checkpoints" / "vgg16-cifar10.pt"
DENSENET = SHARED / "checkpoints" / "densenet100-cifar10-dice.pth.tar"
FULL = dict(epochs=30, batch_size=512, lr=0.4, max_batches=None, images=4096, repeats=3, sizes=[], oods=None)
SMOKE = dict(epochs=1, batch_size=16, lr=0.05, max_batches=1, images=32, repeats=1,
             sizes=["--max-train", "128", "--max-test", "64", "--max-ood", "32"], oods=["dtd"])


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the same steps on the CPU at a tiny size")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_run"), help="output folder when $OUT is not set")
    p.add_argument("--device", default=None, help="torch device (default: cuda, or cpu with --smoke)")
    p.add_argument("--source-root", type=Path, default=SHARED / "data", help="raw datasets")
    p.add_argument("--epochs", type=int, default=None, help=f"ResNet34 epochs (default {FULL['epochs']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch (default {FULL['batch_size']})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {FULL['lr']})")
    p.add_argument("--steps", nargs="+", default=None,
                   help="run only these steps (train eval export speed features-vgg16 features-resnet34 "
                        "features-densenet100 detectors detect score-speed)")
    return p


class Steps:
    """Runs commands as named steps: output to ``logs/<name>.log`` and the console, wall time recorded."""

    def __init__(self, out: Path, only=None):
        self.out, self.only, self.rows = out, only, []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cmd) -> bool:
        if self.only and name not in self.only:
            return True
        cmd = [str(c) for c in cmd]
        print(f"\n== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        with open(self.out / "logs" / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log.write(line)
                if "\r" not in line:        # progress bars stay in the log file
                    sys.stdout.write(line)
            rc = proc.wait()
        seconds = time.perf_counter() - start
        self.rows.append({"step": name, "seconds": seconds, "ok": rc == 0})
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.1f} s", flush=True)
        return rc == 0

    def call(self, name: str, fn) -> bool:
        """A step in this process (small, e.g. writing a file)."""
        if self.only and name not in self.only:
            return True
        start = time.perf_counter()
        try:
            fn()
            ok = True
        except Exception as e:   # recorded, and the next steps still run
            print(f"== {name}: FAILED ({type(e).__name__}: {e})", flush=True)
            ok = False
        self.rows.append({"step": name, "seconds": time.perf_counter() - start, "ok": ok})
        return ok


def environment(out: Path) -> None:
    smi = shutil.which("nvidia-smi")
    text = subprocess.run([smi], capture_output=True, text=True).stdout if smi else "nvidia-smi: not found\n"
    write_text(out / "nvidia-smi.txt", text)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    import torch
    write_text(out / "packages.txt", f"python {sys.version.split()[0]}\ntorch {torch.__version__} (CUDA "
                                     f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})\n\n{freeze}")


def main(args):
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    device = args.device or ("cpu" if args.smoke else "cuda")
    out = Path(os.environ.get("OUT") or args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out, args.steps)
    py = sys.executable
    data = ["--ind", "cifar10", "--source-root", args.source_root, "--data-root", out / "data"] + cfg["sizes"]
    runs = ["--runs-root", out / "runs"]
    environment(out)

    # 1. ResNet34: train, evaluate in float32, export in float16.
    train_dir = out / "resnet34-train"
    half = out / f"resnet34-cifar10-onecycle{cfg['epochs']}-fp16.pt"
    train = [py, "train_backbone_model.py", "--model", "resnet34", *data, "--schedule", "onecycle",
             "--epochs", cfg["epochs"], "--batch-size", cfg["batch_size"], "--lr", cfg["lr"], "--weight-decay", "5e-4",
             "--amp", "auto", "--device", device, "--out", train_dir]
    if cfg["max_batches"]:
        train += ["--max-batches", cfg["max_batches"]]
    steps.run("train", train)
    steps.run("eval", [py, "train_backbone_model.py", "--model", "resnet34", *data, "--device", device,
                       "--eval-only", train_dir / "final.pt"])
    steps.call("export", lambda: (export_half(train_dir / "final.pt", half),
                                  shutil.copy(train_dir / "log.csv", half.with_name(half.stem[:-5] + "-log.csv"))))
    resnet34 = half if half.exists() else train_dir / "final.pt"

    # 2. Bare forward pass against feature extraction, side by side.
    steps.run("speed", [py, "-m", "benchmarks.feature_speed", "--source-root", args.source_root, "--device", device,
                        "--images", cfg["images"], "--repeats", cfg["repeats"],
                        "--models", "vgg16", "resnet34", "densenet100"])

    # 3. Stage 2 on three backbones.
    ood = ["--ood", *cfg["oods"]] if cfg["oods"] else []
    steps.run("generate", [py, "generate_datasets.py", *data, *ood])
    for name, ckpt in (("vgg16", VGG16), ("resnet34", resnet34), ("densenet100", DENSENET)):
        steps.run(f"features-{name}", [py, "save_inter_outputs.py", *data, *runs, "--model", name,
                                       "--checkpoint", ckpt, "--device", device])

    # 4. Stages 3-4 on VGG16 with torch scoring on the device, and the scoring ratio.
    vgg = [*data, *runs, "--model", "vgg16", "--checkpoint", VGG16, "--jobs", str(os.cpu_count() or 1)]
    steps.run("detectors", [py, "train_ood_detectors.py", *vgg])
    steps.run("detect", [py, "detect_oods.py", *vgg, "--score-device", device])
    steps.run("score-speed", [py, "-m", "benchmarks.score_speed", "--checkpoint", VGG16, "--runs-root", out / "runs",
                              "--device", device, "--images", cfg["images"]])

    lines = [f"device {device}; {'smoke' if args.smoke else 'full'} run; output {out}", "",
             "| step | wall time (s) | status |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']:.1f} | {'ok' if r['ok'] else 'FAILED'} |" for r in steps.rows]
    for name in ("eval", "speed", "score-speed"):
        log = out / "logs" / f"{name}.log"
        if log.exists():
            tail = [ln for ln in log.read_text().splitlines() if ln.startswith("|") or "%" in ln or "x" in ln[:3]]
            lines += ["", f"### {name}", ""] + tail[-20:]
    write_text(out / "timings.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0 if all(r["ok"] for r in steps.rows) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
