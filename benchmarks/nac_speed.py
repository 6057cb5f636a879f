"""NAC-UE's stage-2 pass (utils/nac.py): how its cost depends on the taps, and what freezing the parameters saves.

    python -m benchmarks.nac_speed --checkpoint ../shared/checkpoints/densenet100-cifar10-dice.pth.tar \\
        --model densenet100 --taps all trans1.conv1: trans2.conv1: fc

Side by side on the same images, in one run: plain inference (the features pass), the pass as its first
version here ran it (parameters requiring grad, so the graph starts at the input and the backward goes
down to the first layer), and ``nac_values`` on each tap set (parameters frozen, the graph
starting at the first chosen tap). Prints images per second and each row's ratio to the unfrozen every-tap
pass, and checks that the frozen every-tap pass gives the same values.

``--with-features``: also, per tap set, stage 2's whole work for ``--nac`` timed both ways, side by side: the
features pass then NAC's pass, and the features taken from NAC's own forward (``extract_with_nac``, what
stage 2 does), with the ratio of the two and a check that both write the same features.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import load_model
from utils.inputs import normalization_of, to_input
from utils.extraction import extract, extract_with_nac
from utils.nac import _reduce, nac_values, select_taps


def unfrozen(model, images, device, batch_size):
    """Every tap's z * dKL/dz with the parameters left requiring grad (the reference way)."""
    captured, out = [], []
    handles = [m.register_forward_hook(lambda _m, _i, o: captured.append(o)) for m in model.tap_modules]
    try:
        for s in range(0, len(images), batch_size):
            captured.clear()
            p = torch.softmax(model(to_input(images[s:s + batch_size], device, normalization=normalization_of(model))), 1)
            grads = torch.autograd.grad((-torch.log(p + 1e-12).mean(1)).sum(), captured)
            out.append(torch.cat([_reduce(z.detach() * g) for z, g in zip(captured, grads)], 1))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out).numpy()


def plain(model, images, device, batch_size):
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            model(to_input(images[s:s + batch_size], device, normalization=normalization_of(model)))


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=Path, default=Path("data/generated/cifar10/trainall-testall-ood10000-seed0/"
                                                            "test/images.npy"), help="uint8 images (stage 1's)")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--taps", nargs="+", default=["all"], help="--nac-taps specs to time")
    parser.add_argument("--with-features", action="store_true",
                        help="also time the features and NAC in two passes against one (stage 2 with --nac)")
    return parser


def main(args):
    model, cpu = load_model(args.checkpoint, args.model).eval(), torch.device("cpu")
    images = np.ascontiguousarray(np.load(args.images, mmap_mode="r")[:args.count])
    nac_values(model, images[:args.batch_size], cpu, args.batch_size)        # warm-up

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return len(images) / (time.perf_counter() - start), result

    base, reference = timed(lambda: unfrozen(model, images, cpu, args.batch_size))
    rows = [("plain inference (no gradients)", timed(lambda: plain(model, images, cpu, args.batch_size))[0], None),
            (f"unfrozen, every tap ({model.num_taps})", base, None)]
    for spec in args.taps:
        taps = select_taps(spec, model.tap_names)
        speed, values = timed(lambda: nac_values(model, images, cpu, args.batch_size, taps=taps))
        if len(taps) == model.num_taps:
            error = float(np.abs(values - reference).max() / np.abs(reference).max())
            rows.append((f"frozen, every tap ({len(taps)})", speed, error))
        else:
            rows.append((f"frozen, {spec} ({len(taps)} taps)", speed, None))
    if args.with_features:
        for spec in args.taps:
            taps = select_taps(spec, model.tap_names)
            with tempfile.TemporaryDirectory() as two, tempfile.TemporaryDirectory() as one:
                separate = timed(lambda: (extract(model, images, Path(two), cpu, args.batch_size, progress=False),
                                          nac_values(model, images, cpu, args.batch_size, taps=taps)))[0]
                joint = timed(lambda: extract_with_nac(model, images, Path(one), cpu, args.batch_size, taps=taps))[0]
                gap = max(float(np.abs(np.load(Path(one) / f.name) - np.load(f)).max()) for f in Path(two).glob("*.npy"))
            rows.append((f"features + NAC {spec}, two passes", separate, None))
            rows.append((f"features + NAC {spec}, one pass", joint, None))
            print(f"{spec}: one pass {joint / separate:.2f}x the speed of two; features differ by at most {gap:.1e}")
    print(f"{model.arch}, {len(images)} images, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'pass':48s} {'img/s':>7s} {'x unfrozen':>10s}")
    for name, speed, error in rows:
        note = "" if error is None else f"   values equal to unfrozen's to {error:.1e} (relative)"
        print(f"{name:48s} {speed:7.1f} {speed / base:10.2f}{note}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
