"""Feature extraction against the bare forward pass of the same model, same batches, device and precision.

    python -m benchmarks.feature_speed --images 2048 --repeats 3

Prints images per second of ``model(x)`` alone and of ``utils.features.extract`` (every tap pooled on
the device and written into preallocated ``.npy`` files), and their ratio, for VGG16 and ResNet-56.
Timings alternate between the two, and the best of ``--repeats`` rounds counts, to damp machine noise.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import create_model
from utils.data import find_source, load_subset
from utils.inputs import to_input
from utils.extraction import extract


@torch.inference_mode()
def bare_forward(model, images, batch_size, device):
    for start in range(0, len(images), batch_size):
        model(to_input(images[start:start + batch_size], device))


def timing_parser(doc: str, images: int, repeats: int, models) -> argparse.ArgumentParser:
    """The flags every forward-pass timing script shares (this one and inference_options.py)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--source-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="where cifar10 test images are found")
    p.add_argument("--images", type=int, default=images, help="images per timing")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--repeats", type=int, default=repeats, help="alternating rounds; the best of each counts")
    p.add_argument("--models", nargs="+", default=models, help="models to time")
    p.add_argument("--device", default="cpu", help="device")
    return p


def test_images(args):
    """``--images`` seeded CIFAR-10 test images from ``--source-root`` (exits with what is missing)."""
    source, missing = find_source("cifar10", "test", [args.source_root])
    if source is None:
        sys.exit(missing)
    return load_subset(source, args.images, seed=0, progress=False)[0]


def get_args_parser():
    return timing_parser(__doc__, 2048, 3, ["vgg16", "resnet56"])


def main(args):
    device = torch.device(args.device)
    images = test_images(args)
    print(f"{len(images)} CIFAR-10 test images, batch {args.batch_size}, float32, {device}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | bare forward (img/s) | feature extraction (img/s) | ratio |\n|---|---|---|---|")
    for name in args.models:
        model = create_model(name).to(device).eval()
        bare_forward(model, images[:args.batch_size], args.batch_size, device)   # warm-up
        best_bare = best_ext = float("inf")
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                t = time.perf_counter()
                bare_forward(model, images, args.batch_size, device)
                best_bare = min(best_bare, time.perf_counter() - t)
                t = time.perf_counter()
                extract(model, images, Path(tmp), device, args.batch_size, progress=False)
                best_ext = min(best_ext, time.perf_counter() - t)
        bare, ext = len(images) / best_bare, len(images) / best_ext
        print(f"| {name} | {bare:.0f} | {ext:.0f} | {ext / bare:.2f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
