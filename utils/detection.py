"""Stage 4: score the test split and every OOD set with every scoring method, and write the tables
(the library behind ``detect_oods.py``).

Results are built in a staging directory and moved into place whole; the figures are drawn after, and
a failure there is logged without losing the tables.
"""
import logging
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import sklearn
import torch

from models import create_model

from . import plots
from .data import NEAR_OODS, variant
from .detectors import LAOOD, early_exit, exit_cost
from .features import load_features, load_head
from .fitting import load_detectors, train_detectors
from .io import StagingDir, format_table, read_json, save_npy, write_csv, write_json, write_text
from .methods import Inputs, get_method, list_methods, score_methods
from .paths import (ARGMAX_PLOT, EARLY_EXIT, HISTOGRAM_PLOT, MANIFEST, OVERVIEW_CSV, PER_LAYER_PLOT, RUN_RECORD,
                    SPREAD_CSV,
                    SPREAD_MD, SUMMARY_CSV, SUMMARY_MD, Layout, roc_plot, scores_file, set_table)
from .tables import comparisons, layer_table, method_row, oracle_row, overview, pick_ood, spread_over_seeds

log = logging.getLogger(__name__)


def exit_table(inputs: Inputs, arch: str, num_classes: int, taps: Optional[str] = None) -> List[Dict]:
    """Per set: how many images early exit stopped, at which layer on average, at what share of the MACs."""
    cumulative, total = create_model(arch, num_classes, taps=taps).tap_macs()
    rows = []
    for name, s in inputs.layer_scores.items():
        _, stop = early_exit(s, inputs.calibration, inputs.exit_threshold, inputs.exit_k)
        rows.append({"set": name, "stopped_pct": 100 * float((stop >= 0).mean()),
                     "mac_fraction": exit_cost(stop, cumulative, total),
                     "mean_stop_layer": float(stop[stop >= 0].mean() + 1) if (stop >= 0).any() else float("nan")})
    return rows


def detect(run: Path, det_dir: Path, ood_names: Sequence[str], seed: int = 0, n_jobs: int = 1,
           methods: Optional[Sequence[str]] = None, exit_threshold: float = 0.99, exit_k: int = 2,
           record: Optional[Dict] = None, cache: Optional[Dict] = None, backend: Optional[str] = None,
           score_device: Optional[str] = None, near: Sequence[str] = NEAR_OODS) -> List[Dict]:
    """Score the test split and every OOD set; write per-set tables, the summary, figures and a run record.

    The summary has one row per OOD set and method: every registered scoring method in ``methods``
    (default: all) whose needs are met, and the best single layer (an oracle: chosen with the OOD labels),
    all on the same balanced comparisons. Scores of methods that do not use the detectors do not depend
    on them: a ``cache`` dict passed to several calls computes them once. ``backend``: joblib's backend for
    the per-layer scoring (e.g. ``"dask"``); ``score_device``: score One-Class SVM layers with torch on that
    device instead (see :meth:`LAOOD.score_layers`). ``near``: the sets averaged as near-OOD in the overview
    (``overview.csv`` and the head of ``summary.md``: AUROC per set with near, far and mean).
    """
    start = time.time()
    test = load_features(run, "test")
    if not ood_names:
        raise ValueError(f"no OOD sets to score in {run / 'features'}; generate and save some first")
    sha = test["manifest"]["settings"]["checkpoint_sha256"]
    la = load_detectors(det_dir, expect_sha=sha)
    la.n_jobs, la.backend = n_jobs, backend
    sets = {"test": test, **{name: load_features(run, name, expect_sha=sha) for name in ood_names}}
    layer_scores = {name: la.score_layers(f["layers"], device=score_device) for name, f in sets.items()}
    inputs = Inputs(train=load_features(run, "train"), sets=sets, head=load_head(run), layer_scores=layer_scores,
                    calibration=la.calibration_, seed=seed, exit_threshold=exit_threshold, exit_k=exit_k)
    names = list(methods) if methods is not None else list_methods()
    cache = {} if cache is None else cache
    fresh = [m for m in names if m not in cache]
    # Scores that depend on neither the detectors nor a held-back split are the same at every seed.
    fixed = lambda m: not (get_method(m).needs & {"detectors", "calibration", "layers"})  # noqa: E731
    scores = score_methods([m for m in fresh if not fixed(m)], inputs)
    cache.update(score_methods([m for m in fresh if fixed(m)], inputs))
    scores.update({m: cache[m] for m in names if m in cache})
    scores = {m: scores[m] for m in names if m in scores}     # registry order

    ind = layer_scores["test"]
    summary, tables = [], {}
    pairs = comparisons(len(ind), {n: len(layer_scores[n]) for n in ood_names}, seed)
    for name, i_idx, o_idx in pairs:
        ood_layers = pick_ood(layer_scores, name, o_idx, ood_names)
        tables[name] = layer_table(ind[i_idx], ood_layers)
        n = len(i_idx) if o_idx is not None else f"{len(i_idx)}+{len(ood_layers)}"
        rows = [method_row(name, m, n, s["test"][i_idx], pick_ood(s, name, o_idx, ood_names))
                for m, s in scores.items()]
        summary += rows[:1] + [oracle_row(tables[name], name, n)] + rows[1:]

    out = Layout.results(run, la.tag)
    settings = {"checkpoint_sha256": sha, "detectors": str(det_dir), "eval_seed": seed, "sets": list(sets)}
    run_record = {
        "checkpoint_sha256": sha, "features": str(run), "detectors": str(det_dir), "eval_seed": seed,
        "sets": {n: f["manifest"]["settings"]["images"] for n, f in sets.items()},
        "normalization": test["manifest"]["settings"].get("normalization"), "variants": set_variants(sets),
        "counts": {n: len(f["logits"]) for n, f in sets.items()},
        "detector_settings": read_json(Path(det_dir) / MANIFEST)["settings"], "methods": list(scores),
        "early_exit": {"threshold": exit_threshold, "k": exit_k}, "near": [n for n in ood_names if n in near],
        "detect_seconds": time.time() - start, "versions": package_versions(), **(record or {})}
    with StagingDir(out, settings) as tmp:
        for name, rows in tables.items():
            write_csv(tmp / set_table(name), rows)
        for name, s in layer_scores.items():
            save_npy(scores_file(tmp, name), s.astype(np.float32))
        if "early exit" in scores:
            fs = test["manifest"]["settings"]
            write_csv(tmp / EARLY_EXIT, exit_table(inputs, fs["arch"], test["logits"].shape[1], fs.get("tap_spec")))
        write_csv(tmp / SUMMARY_CSV, summary)
        table = overview(summary, near)
        write_csv(tmp / OVERVIEW_CSV, table)
        near_sets = ", ".join(n for n in ood_names if n in near) or "none"
        write_text(tmp / SUMMARY_MD, f"AUROC; near = mean over {near_sets}, far = mean over the other sets, mean = "
                                     f"over all (combined left out)\n\n{format_table(table)}\nEvery metric:\n\n"
                                     + format_table(summary) + notes_text(run_record["variants"]))
        write_json(tmp / RUN_RECORD, run_record)
    try:
        _plot(out, tables, layer_scores, scores, ood_names, pairs)
    except Exception as e:   # a figure must never cost the tables
        log.warning(f"could not draw the figures in {out} ({type(e).__name__}: {e}); the tables are saved")
    log.info(f"results -> {out}")
    return summary


def set_variants(sets: Dict[str, Dict]) -> Dict[str, str]:
    """``{set: 'variant (source)'}`` for the sets published in several versions (LSUN: resize or crop)."""
    out = {}
    for name, f in sets.items():
        source = f["manifest"]["settings"]["images"]["source"]
        if variant(name, source):
            out[name] = f"{variant(name, source)} ({source})"
    return out


def notes_text(variants: Dict[str, str]) -> str:
    return "".join(f"\n{name}: {note}\n" for name, note in variants.items())


def repeat_over_seeds(run: Path, make_laood: Callable[[int], LAOOD], seeds: Sequence[int],
                      ood_names: Sequence[str], **detect_kwargs) -> List[Dict]:
    """The detector stage and detection repeated for each seed (the 70/30 split and the balanced
    subsets change; the images and features do not); writes and returns the spread table."""
    per_seed, cache = {}, {}
    for seed in seeds:
        la = make_laood(seed)
        per_seed[seed] = detect(run, train_detectors(run, la), ood_names, seed=seed, cache=cache, **detect_kwargs)
    rows = spread_over_seeds(per_seed)
    out = Layout.results(run, Layout.seeds_tag(la.kind.tag(la.get_params()), seeds, la.calibration_size))
    with StagingDir(out, {"seeds": list(seeds), "detector_tag": la.tag}) as tmp:
        write_csv(tmp / SPREAD_CSV, rows)
        write_text(tmp / SPREAD_MD, format_table(rows))
    log.info(f"spread over seeds {list(seeds)} -> {out}")
    return rows


def _plot(out: Path, tables, layer_scores, scores, oods, pairs) -> None:
    """Per-layer AUROC, argmax counts, score histograms and ROC curves, as PNG beside the tables."""
    per_set = {n: rows for n, rows in tables.items() if n != "combined"}
    plots.per_layer_auroc(per_set, out / PER_LAYER_PLOT)
    plots.argmax_counts(per_set, out / ARGMAX_PLOT)
    plots.histograms(layer_scores["test"].max(1), {n: layer_scores[n].max(1) for n in oods}, out / HISTOGRAM_PLOT)
    for name, i_idx, o_idx in pairs:
        if o_idx is None:
            continue
        curves = {m: (s["test"][i_idx], s[name][o_idx]) for m, s in scores.items()}
        plots.roc_curves(curves, out / roc_plot(name), f"ROC: {name}")


def package_versions() -> Dict[str, str]:
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__}
