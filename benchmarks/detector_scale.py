"""The detector stage at 10^4 to 10^6 training vectors: wall time and peak memory, exact and approximate.

    python -m benchmarks.detector_scale --checkpoint ../shared/checkpoints/vgg16-cifar10.pt \
        --sizes 10000 100000 1000000 --exact-max 10000 --plot docs/detector_scale.png

For every n, 13 layers with VGG16's widths are written as ``.npy`` files and fitted from memory maps
(``LAOOD(...).fit`` on the maps, 2 layers at a time), as the detector stage does. Up to the run's 50,000
train images the vectors are the real CIFAR-10 features of the checkpoint (a seeded subset); beyond,
they are synthetic: drawn from a Gaussian with each layer's mean and covariance measured on the real
features. The exact One-Class SVM runs up to ``--exact-max`` vectors, the approximate one everywhere.

Prints wall time and peak memory per n and detector. Peak memory is the largest sum, over this process
and its workers, of anonymous resident memory (``RssAnon``: what the processes themselves allocated; the
memory-mapped feature files are page cache the kernel can drop, and are not counted), sampled every
0.2 s. Writes the table as CSV beside the plot.
"""
import argparse
import csv
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.detector_speed import find_run

from utils.detectors import LAOOD
from utils.detectors.approx import ApproxOCSVM
from utils.detectors.ocsvm import ExactOCSVM

EXACT, APPROX = ExactOCSVM.name, ApproxOCSVM.name


def _anon_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


class PeakMemory:
    """Samples the anonymous resident memory of this process tree in a thread; ``peak`` in bytes."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_anon_bytes(p) for p in _tree(os.getpid())))
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_layers(directory: Path, n: int, real, seed: int, chunk: int = 20000):
    """``n`` vectors per layer as .npy files: the real features (a seeded subset) up to their count,
    Gaussian draws with each layer's mean and covariance beyond. Returns the memory maps and the source."""
    rng = np.random.default_rng(seed)
    count = len(real[0])
    maps = []
    synthetic = n > count
    idx = None if synthetic else np.sort(rng.choice(count, n, replace=False))
    for i, X in enumerate(tqdm(real, desc=f"writing {n:,} x {len(real)} layers", leave=False)):
        out = np.lib.format.open_memmap(directory / f"layer_{i:03d}.npy", "w+", np.float32, (n, X.shape[1]))
        if synthetic:
            Xd = np.asarray(X, dtype=np.float64)
            mean, cov = Xd.mean(0), np.cov(Xd, rowvar=False)
            L = np.linalg.cholesky(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))).astype(np.float32)
            for s in range(0, n, chunk):
                m = min(chunk, n - s)
                out[s:s + m] = rng.standard_normal((m, len(L)), dtype=np.float32) @ L.T + mean.astype(np.float32)
        else:
            out[:] = X[idx]
        out.flush()
        del out
        maps.append(np.load(directory / f"layer_{i:03d}.npy", mmap_mode="r"))
    return maps, ("synthetic (Gaussian, per-layer mean and covariance of the real features)" if synthetic
                  else "real CIFAR-10 train features")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="backbone whose features are used (VGG16: 13 layers)")
    p.add_argument("--runs-root", default="runs", help="root of the runs")
    p.add_argument("--ind", default="cifar10", help="in-distribution set")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="training vectors n")
    p.add_argument("--exact-max", type=int, default=100_000, help="largest n fitted with the exact One-Class SVM")
    p.add_argument("--jobs", type=int, default=2, help="layers fitted in parallel")
    p.add_argument("--workdir", type=Path, default=None, help="where the .npy files go (default: a temporary "
                                                                 "directory; 10^6 x VGG16 takes 17 GB)")
    p.add_argument("--plot", type=Path, default=None, help="log-log plot of time against n (PNG); CSV beside it")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args):
    run, train, _, _ = find_run(args.checkpoint, args.runs_root, args.ind)
    real = train["layers"]
    print(f"{len(real)} layers, widths {[X.shape[1] for X in real]}; real features: {run} ({len(real[0]):,})\n")
    rows = []
    # The approximation at every n first, then the exact detector where asked: a long exact fit at the end
    # never holds back the approximation's figures (the data of an n is drawn again, seeded: the same).
    for detector in (APPROX, EXACT):
        for n in [n for n in args.sizes if detector == APPROX or n <= args.exact_max]:
            work = Path(tempfile.mkdtemp(prefix=f"scale{n}-", dir=args.workdir))
            try:
                t = time.perf_counter()
                layers, source = write_layers(work, n, real, args.seed)
                print(f"n = {n:,}: {source}, written in {time.perf_counter() - t:.0f} s")
                with PeakMemory() as mem:
                    t = time.perf_counter()
                    la = LAOOD(detector=detector, seed=args.seed, n_jobs=args.jobs).fit(layers)
                    seconds = time.perf_counter() - t
                gammas = " ".join(f"{r['gamma']:g}" for r in la.records_)
                rows.append({"n": n, "detector": detector, "seconds": round(seconds, 1),
                             "peak_anon_gb": round(mem.peak / 1e9, 2), "data": source.split(" (")[0],
                             "gammas": gammas})
                print(f"  {detector}: {seconds:.0f} s, peak memory {mem.peak / 1e9:.2f} GB, gammas {gammas}", flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda r: (r["n"], r["detector"]))
    print("\n| n | detector | wall time (s) | peak memory (GB) | data | gamma per layer |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['detector']} | {r['seconds']:.0f} | {r['peak_anon_gb']:.2f} | {r['data']} | "
              f"{r['gammas']} |")
    approx = [r for r in rows if r["detector"] == APPROX]
    if len(approx) > 1:
        slope = np.polyfit(np.log10([r["n"] for r in approx]), np.log10([r["seconds"] for r in approx]), 1)[0]
        print(f"\nocsvm-approx: time grows as n^{slope:.2f} over n = {approx[0]['n']:,} .. {approx[-1]['n']:,}")
    if args.plot:
        write_plot(rows, args.plot)


def write_plot(rows, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for detector, marker in ((EXACT, "s"), (APPROX, "o")):
        pts = [(r["n"], r["seconds"]) for r in rows if r["detector"] == detector]
        if pts:
            ax.loglog(*zip(*pts), marker=marker, label=detector)
    ax.set_xlabel("training vectors per layer (n)")
    ax.set_ylabel("detector stage, 13 layers (s)")
    ax.set_title("Detector stage time on 2 CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}; table: {path.with_suffix('.csv')}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
