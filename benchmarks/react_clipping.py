"""Why ReAct falls below Energy on a backbone: its clipping level against the penultimate activations.

    python -m benchmarks.react_clipping --checkpoint ../shared/checkpoints/densenet100-cifar10-dice.pth.tar \\
        --model densenet100 --source-root ../shared/data

On seeded subsets (``--train`` train images for the clipping level, ``--per-set`` images of the test split
and of every OOD set) it checks that the head applied to the saved penultimate features gives the model's
logits (so the method reads the right inputs), that ReAct's scores equal pytorch-ood's, and prints, for
clipping levels at several percentiles of the train activations (90 is ReAct's default and the one our
tables use; the others are shown to explain, not to choose), the share of activations and of images
clipped and the AUROC of each set. The percentile 100 row is Energy (nothing clipped).
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from utils.data import subset_indices
from utils.inputs import normalization_of, to_input
from utils.features import open_backbone
from utils.generate import DataConfig, default_oods, generate, load_images
from utils.methods import energy, linear, react_threshold
from utils.metrics import ood_metrics
from utils.paths import Layout


def penultimate_and_logits(model, images: np.ndarray, batch_size: int = 250):
    pens, logits = [], []
    norm = normalization_of(model)
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            o = model.forward_intermediates(to_input(images[s:s + batch_size], normalization=norm), layers=[],
                                            penultimate=True)
            pens.append(o.penultimate.float())
            logits.append(o.logits.float())
    return torch.cat(pens).numpy(), torch.cat(logits).numpy()


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--source-root", type=Path, action="append", required=True)
    p.add_argument("--data-root", type=Path, default=Layout.data_root)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--per-set", type=int, default=2000)
    p.add_argument("--cache", type=Path, default=None,
                   help="an .npz to keep the penultimate features in (read when it exists: the forward passes are the slow part)")
    p.add_argument("--percentiles", type=float, nargs="+", default=[80, 90, 95, 99, 99.9, 100])
    return p


def main(args):
    torch.set_grad_enabled(False)
    cfg = DataConfig(ind="cifar10", roots=args.source_root)
    layout = Layout(args.data_root, Layout.runs_root)
    generate(cfg, layout)
    model, _ = open_backbone(args.checkpoint, "cifar10", args.model)
    head = dict(model.named_modules())[model.head_name]
    weight, bias = head.weight.double().numpy(), head.bias.double().numpy()
    feats = dict(np.load(args.cache)) if args.cache is not None and args.cache.exists() else {}
    for name in [] if feats else ["train", "test"] + default_oods("cifar10"):
        try:
            images, _, _ = load_images(layout, "cifar10", cfg.tag, name)
        except FileNotFoundError:      # a set with no source offline (svhn)
            continue
        n = args.train if name == "train" else args.per_set
        idx = subset_indices(len(images), min(n, len(images)), seed=0)
        pen, logits = penultimate_and_logits(model, np.asarray(images[idx]))
        feats[name] = pen
        err = np.abs(linear(pen, (weight, bias)) - logits).max()
        print(f"{name}: {len(idx)} images, head(penultimate) - logits: max |diff| {err:.2e}")
    if args.cache is not None and not args.cache.exists():
        np.savez(args.cache, **feats)
    train = feats.pop("train")
    test = feats.pop("test")

    import pytorch_ood.detector as pood
    ref = pood.ReAct(None, head.float(), percentile=0.9).fit_feature_maps(torch.from_numpy(train),
                                                                        torch.zeros(len(train), dtype=torch.long))
    ours = energy(linear(np.minimum(test, react_threshold(train, 90)), (weight, bias)))
    theirs = ref.predict_feature_maps(torch.from_numpy(test)).numpy()
    print(f"ReAct (p90) against pytorch-ood on the test images: max relative difference "
          f"{np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)):.1e}")

    width = train.shape[1]
    per_unit_p90 = np.percentile(train, 90, axis=0)
    print(f"penultimate width {width}; zero activations: train {np.mean(train == 0):.1%}")
    sets = list(feats)
    print("\n| percentile | clip level | activations clipped (test) | test images with one clipped | units whose "
          "own train p90 is above it | " + " | ".join(sets) + " | mean |")
    print("|---" * (6 + len(sets)) + "|")
    for q in args.percentiles:
        c = react_threshold(train, q)
        score = lambda f: energy(linear(np.minimum(f, c), (weight, bias)))  # noqa: E731
        aurocs = [ood_metrics(score(test), score(feats[s]))["auroc"] for s in sets]
        print(f"| {q:g} | {c:.3f} | {np.mean(test > c):.1%} | {np.mean((test > c).any(1)):.1%} | "
              f"{np.sum(per_unit_p90 > c)} of {width} | " + " | ".join(f"{a:.2f}" for a in aurocs)
              + f" | {np.mean(aurocs):.2f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
