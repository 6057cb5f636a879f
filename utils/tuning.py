"""Hyperparameter search on a validation split, the way OpenOOD v1.5 tunes its postprocessors.

The validation images are held out of the evaluation: ``VALIDATION_SIZE`` in-distribution test images (an equal,
seeded number per class: 100 per class for CIFAR-10) and ``VALIDATION_SIZE`` seeded images of one OOD set
(``VALIDATION_OOD``: Tiny ImageNet, as OpenOOD v1.5 takes its OOD validation images from TIN). Every method with a
grid (:attr:`Method.grid`) is scored at each grid point on the validation images only, from the saved features
(no pass through the network), and the point with the largest validation AUROC is kept (the defaults win ties).
Both tables of a tuned run, at the defaults and tuned, are then computed on the test and OOD images that remain:
no validation image is evaluated and no other OOD image enters any choice.
"""
import logging
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .methods import Inputs, get_method
from .metrics import ood_metrics

log = logging.getLogger(__name__)

VALIDATION_SIZE = 1000
VALIDATION_OOD = "tiny"
VAL_IN, VAL_OUT = "validation: test", "validation: ood"   # the two sets of the validation inputs


def validation_split(labels: np.ndarray, n_ood: int, seed: int, size: int = VALIDATION_SIZE
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """``(test rows, OOD rows)`` held out for validation, both sorted: ``size // classes`` seeded test images of
    each class and ``size`` seeded rows of an OOD set of ``n_ood`` images."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = size // len(classes)
    if per_class == 0:
        raise ValueError(f"a validation split of {size} images cannot hold one image of each of {len(classes)} classes")
    rng = np.random.default_rng([seed, 1])
    ind = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) <= per_class:
            raise ValueError(f"class {c} has {len(rows)} test images; a validation split of {per_class} per class "
                             f"would leave none to evaluate")
        ind.append(rng.choice(rows, per_class, replace=False))
    if n_ood <= size:
        raise ValueError(f"the validation OOD set has {n_ood} images; holding out {size} would leave none to evaluate")
    ood = np.random.default_rng([seed, 2]).choice(n_ood, size, replace=False)
    return np.sort(np.concatenate(ind)), np.sort(ood)


def remaining(n: int, held: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.arange(n), held, assume_unique=True)


def search(names: Sequence[str], val: Inputs) -> Dict[str, Dict[str, Any]]:
    """For each method in ``names`` that has a grid and whose needs ``val`` meets: every grid point's validation
    AUROC and the chosen point. ``val`` holds exactly the two sets ``VAL_IN`` and ``VAL_OUT``."""
    if set(val.sets) != {VAL_IN, VAL_OUT}:
        raise ValueError(f"the search reads the validation sets only ({VAL_IN!r}, {VAL_OUT!r}), got {sorted(val.sets)}")
    out = {}
    todo = [get_method(n) for n in names if get_method(n).grid and not get_method(n).missing(val)]
    for method in tqdm(todo, desc="tuning", unit="method"):
        start, points = time.time(), []
        for values in method.grid_points(val):
            scores = method.score(val, **values)
            points.append({"values": values, "auroc": ood_metrics(scores[VAL_IN], scores[VAL_OUT])["auroc"]})
        best = max(points, key=lambda p: p["auroc"])          # the first maximum: the defaults win ties
        out[method.name] = {"chosen": best["values"], "val_auroc": best["auroc"],
                            "default_val_auroc": points[0]["auroc"], "points": points, "seconds": time.time() - start, "grid_source": method.grid_source}
        log.info(f"{method.name}: {describe(best['values'])} (validation AUROC {best['auroc']:.2f}, "
                 f"{points[0]['auroc']:.2f} at the defaults; {len(points)} points, {time.time() - start:.1f} s)")
    return out


def chosen(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {name: r["chosen"] for name, r in results.items()}


def describe(values: Optional[Dict[str, Any]]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in (values or {}).items()) or "no hyperparameters"
