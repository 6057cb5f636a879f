"""Stage 4: score the test split and every OOD set with every scoring method, and write the tables
(the library behind ``detect_oods.py``).

Results are built in a staging directory and moved into place whole; the figures are drawn after, and
a failure there is logged without losing the tables.
"""
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import sklearn
import torch
from tqdm import tqdm

from models import create_model

from . import plots
from .bootstrap import RESAMPLES, Draws, bootstrap_table
from .sets import NEAR_OODS, variant
from .detectors import LAOOD, early_exit, exit_cost
from .features import load_features, load_head
from .fitting import load_detectors, train_detectors
from .io import StagingDir, format_table, read_csv, read_json, save_npy, write_csv, write_json, write_text
from .methods import Inputs, get_method, is_layer_adaptive, list_methods, score_methods
from .paths import (ARGMAX_PLOT, BOOTSTRAP, EARLY_EXIT, HISTOGRAM_PLOT, MANIFEST, MARGINS_CSV, OVERVIEW_CSV,
                    PER_LAYER_PLOT, RUN_RECORD, SPREAD_CSV, SPREAD_MD, SUMMARY_CSV, SUMMARY_MD, TUNED_BOOTSTRAP,
                    TUNED_MARGINS_CSV, TUNED_OVERVIEW_CSV, TUNED_SUMMARY_CSV, TUNING_JSON, Layout, roc_plot,
                    scores_file, set_table)
from .tables import (comparisons, layer_table, margin_rows, mean_sd_table, method_row, oracle_row, order_text,
                     overview, pick_ood, spread_over_seeds, spread_over_splits)
from .tuning import (VAL_IN, VAL_OUT, VALIDATION_OOD, VALIDATION_SIZE, chosen, describe, remaining, search,
                     validation_split)

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


@dataclass(frozen=True)
class DetectConfig:
    """How detection runs; the defaults are the README's."""
    seed: int = 0                                  # balanced subsets of the comparisons, held-back splits
    methods: Optional[Sequence[str]] = None        # scoring methods in the tables (None: every registered one)
    tune: bool = False                             # hold a validation split out and search every method's grid
    tune_seed: Optional[int] = None                # the validation split's seed (None: ``seed``)
    validation_ood: str = VALIDATION_OOD           # the OOD set that gives the validation OOD images
    validation_size: int = VALIDATION_SIZE         # validation images of each side
    near: Sequence[str] = NEAR_OODS                # the sets averaged as near-OOD in the overview
    exit_threshold: float = 0.99                   # early exit's calibrated probability
    exit_k: int = 2                                # early exit's number of layers
    n_jobs: int = 1                                # layers scored in parallel
    backend: Optional[str] = None                  # joblib's backend for that (e.g. "dask")
    score_device: Optional[str] = None             # score One-Class SVM layers with torch there instead
    resamples: int = RESAMPLES                     # paired bootstrap draws of the margins (0: none)
    record: Dict = field(default_factory=dict)     # extra entries for the run record


def detect(run: Path, det_dir: Path, ood_names: Sequence[str], config: DetectConfig = DetectConfig(),
           cache: Optional[Dict] = None) -> List[Dict]:
    """Score the test split and every OOD set; write per-set tables, the summary, figures and a run record.

    The summary has one row per OOD set and method: every registered scoring method in ``config.methods``
    (default: all) whose needs are met, and the best single layer (an oracle: chosen with the OOD labels),
    all on the same balanced comparisons. Scores of methods that do not use the detectors do not depend
    on them: a ``cache`` dict passed to several calls computes them once. With ``config.tune``, a validation
    split is held out (:mod:`utils.tuning`), every method with a grid is tuned on it, and the tables at the
    defaults and tuned are both computed on the images that remain. The overview (``overview.csv`` and the
    head of ``summary.md``) gives AUROC per set with near (``config.near``), far and mean; with
    ``config.resamples``, a paired bootstrap of every method's AUROC (``bootstrap.npz``, :mod:`utils.bootstrap`)
    gives each column's first method, its margins with 95% intervals, and ties (``margins.csv``).
    """
    start = time.time()
    test = load_features(run, "test")
    if not ood_names:
        raise ValueError(f"no OOD sets to score in {run / 'features'}; generate and save some first")
    val_ood = config.validation_ood
    if config.tune and val_ood not in ood_names:
        raise ValueError(f"--tune holds {config.validation_size:,} images of the {val_ood} set out for validation, "
                         f"but it is not among the sets scored ({', '.join(ood_names)}); generate and save it first, "
                         f"or name another with --tune-ood")
    sha = test["manifest"]["settings"]["checkpoint_sha256"]
    la = load_detectors(det_dir, expect_sha=sha, n_jobs=config.n_jobs, backend=config.backend)
    sets = {"test": test, **{name: load_features(run, name, expect_sha=sha) for name in ood_names}}
    cache = {} if cache is None else cache
    key = ("layer scores", str(det_dir), tuple(sets))   # the detectors' scores depend on nothing else
    if key not in cache:
        cache[key] = {name: la.score_layers(f["layers"], device=config.score_device) for name, f in sets.items()}
    layer_scores = cache[key]
    inputs = Inputs(train=load_features(run, "train"), sets=sets, head=load_head(run), layer_scores=layer_scores,
                    calibration=la.calibration_, seed=config.seed, exit_threshold=config.exit_threshold,
                    exit_k=config.exit_k)
    names = list(config.methods) if config.methods is not None else list_methods()
    tuning, split_seed = None, config.seed if config.tune_seed is None else config.tune_seed
    if config.tune:
        cache = None                       # the images evaluated depend on the validation split
        val_in, val_out = validation_split(test["labels"], len(sets[val_ood]["logits"]), split_seed,
                                           config.validation_size)
        tuning = search(names, inputs.restricted({VAL_IN: ("test", val_in), VAL_OUT: (val_ood, val_out)}))
        kept = {"test": remaining(len(test["logits"]), val_in), val_ood: remaining(len(sets[val_ood]["logits"]), val_out)}
        inputs = inputs.restricted({n: (n, kept.get(n, np.arange(len(f["logits"])))) for n, f in sets.items()})
        layer_scores = inputs.layer_scores
    scores = _scores(names, inputs, cache)
    ood_names = list(ood_names)
    pairs = comparisons(len(layer_scores["test"]), {n: len(layer_scores[n]) for n in ood_names}, config.seed)
    tables = _layer_tables(pairs, layer_scores, ood_names)
    summary = _summary(pairs, tables, layer_scores, scores, ood_names)

    out = Layout.results(run, la.tag, tuned=config.tune, split=None if split_seed == config.seed else split_seed)
    draws = _bootstrap(scores, pairs, config)
    settings = {"checkpoint_sha256": sha, "detectors": str(det_dir), "eval_seed": config.seed, "sets": list(sets),
                "tuned": config.tune}
    run_record = {
        "checkpoint_sha256": sha, "features": str(run), "detectors": str(det_dir), "eval_seed": config.seed,
        "sets": {n: f["manifest"]["settings"]["images"] for n, f in sets.items()},
        "normalization": test["manifest"]["settings"].get("normalization"), "variants": set_variants(sets),
        "counts": {n: len(s) for n, s in layer_scores.items()},
        "detector_settings": read_json(Path(det_dir) / MANIFEST)["settings"], "methods": list(scores),
        "early_exit": {"threshold": config.exit_threshold, "k": config.exit_k},
        "near": [n for n in ood_names if n in config.near], **config.record}
    near_sets = ", ".join(n for n in ood_names if n in config.near) or "none"
    head = f"AUROC; near = mean over {near_sets}, far = mean over the other sets, mean = over all (combined left out)"
    table = overview(summary, config.near)
    if tuning is not None:
        tuned_scores = {**scores, **score_methods([m for m, v in chosen(tuning).items() if m in scores and v
                                                   != get_method(m).defaults], inputs, chosen(tuning))}
        tuned_summary = _summary(pairs, tables, layer_scores, tuned_scores, ood_names)
        tuned_table = overview(tuned_summary, config.near)
        tuned_draws = _bootstrap(tuned_scores, pairs, config)
        run_record["validation"] = {"test": f"{len(val_in)} test images, {len(val_in) // len(np.unique(test['labels']))}"
                                            f" per class", val_ood: f"{len(val_out)} images",
                                    "seed": split_seed, "search_seconds": sum(r["seconds"] for r in tuning.values())}
        run_record["tuned"] = chosen(tuning)
    if draws is not None:
        run_record["bootstrap"] = {"resamples": config.resamples, "seed": config.seed,
                                   "draw": "each set resampled whole with replacement, the same draws for every method"}
    run_record["detect_seconds"] = time.time() - start
    run_record["versions"] = package_versions()
    with StagingDir(out, settings) as tmp:
        for name, rows in tables.items():
            write_csv(tmp / set_table(name), rows)
        for name, s in layer_scores.items():
            save_npy(scores_file(tmp, name), s.astype(np.float32))
        if "early exit" in scores:
            fs = test["manifest"]["settings"]
            write_csv(tmp / EARLY_EXIT, exit_table(inputs, fs["arch"], test["logits"].shape[1], fs.get("tap_spec")))
        write_csv(tmp / SUMMARY_CSV, summary)
        write_csv(tmp / OVERVIEW_CSV, table)
        order = _write_margins(tmp, draws, BOOTSTRAP, MARGINS_CSV, config)
        if tuning is None:
            text = f"{head}\n\n{format_table(table)}{order}"
        else:
            write_csv(tmp / TUNED_SUMMARY_CSV, tuned_summary)
            write_csv(tmp / TUNED_OVERVIEW_CSV, tuned_table)
            write_json(tmp / TUNING_JSON, tuning)
            tuned_order = _write_margins(tmp, tuned_draws, TUNED_BOOTSTRAP, TUNED_MARGINS_CSV, config)
            text = (f"{head}; {len(val_in):,} test and {len(val_out):,} {val_ood} images held out for "
                    f"validation (split seed {split_seed}) and not evaluated.\n\nAt the defaults:\n\n"
                    f"{format_table(table)}{order}\nTuned on the validation split (the values chosen are in "
                    f"{TUNING_JSON}):\n\n{format_table(tuned_table)}{tuned_order}"
                    f"\nChosen:\n\n" + "".join(f"- {m}: {describe(v)}\n" for m, v in chosen(tuning).items()))
        write_text(tmp / SUMMARY_MD, f"{text}\nEvery metric (at the defaults):\n\n" + format_table(summary)
                   + notes_text(run_record["variants"]))
        write_json(tmp / RUN_RECORD, run_record)
    try:
        _plot(out, tables, layer_scores, scores, ood_names, pairs)
    except Exception as e:   # a figure must never cost the tables
        log.warning(f"could not draw the figures in {out} ({type(e).__name__}: {e}); the tables are saved")
    log.info(f"results -> {out}")
    return summary


def _bootstrap(scores, pairs, config: DetectConfig) -> Optional[Draws]:
    """The paired bootstrap of every method's AUROC on every OOD set's comparison (``combined`` left out)."""
    if not config.resamples:
        return None
    return bootstrap_table(scores, pairs, config.resamples, config.seed,
                           progress=lambda blocks: tqdm(blocks, desc="bootstrap", unit="block", leave=False))


def _write_margins(tmp: Path, draws: Optional[Draws], npz: str, csv_name: str, config: DetectConfig) -> str:
    """Save the draws and the margins table; returns the order as markdown for ``summary.md`` ("" without draws)."""
    if draws is None:
        return ""
    draws.save(tmp / npz)
    rows = margin_rows(draws, config.near, lambda m: not is_layer_adaptive(m))
    write_csv(tmp / csv_name, rows)
    return (f"\nThe first in each column, with its margins (paired bootstrap, {config.resamples:,} draws, 95% "
            f"intervals; tied where an interval holds 0):\n\n" + order_text(rows))


def _scores(names: Sequence[str], inputs: Inputs, cache: Optional[Dict]) -> Dict[str, Dict[str, np.ndarray]]:
    """Every method's scores at its defaults, in table order; those that depend on neither the detectors nor a
    held-back split (the same at every seed) are taken from / put into ``cache``."""
    cache = {} if cache is None else cache
    fresh = [m for m in names if m not in cache]
    fixed = lambda m: not (get_method(m).needs & {"detectors", "calibration", "layers"})  # noqa: E731
    scores = score_methods([m for m in fresh if not fixed(m)], inputs)
    cache.update(score_methods([m for m in fresh if fixed(m)], inputs))
    scores.update({m: cache[m] for m in names if m in cache})
    return {m: scores[m] for m in names if m in scores}


def _layer_tables(pairs, layer_scores, ood_names) -> Dict[str, List[Dict]]:
    """The per-set layer tables (they do not depend on the methods' hyperparameters)."""
    return {name: layer_table(layer_scores["test"][i_idx], pick_ood(layer_scores, name, o_idx, ood_names))
            for name, i_idx, o_idx in pairs}


def _summary(pairs, tables, layer_scores, scores, ood_names) -> List[Dict]:
    """The summary rows of every comparison: its first method, the oracle layer of its table, the other methods."""
    summary = []
    for name, i_idx, o_idx in pairs:
        n = len(i_idx) if o_idx is not None else f"{len(i_idx)}+{sum(len(layer_scores[o]) for o in ood_names)}"
        rows = [method_row(name, m, n, s["test"][i_idx], pick_ood(s, name, o_idx, ood_names))
                for m, s in scores.items()]
        summary += rows[:1] + [oracle_row(tables[name], name, n)] + rows[1:]
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
                      ood_names: Sequence[str], config: DetectConfig = DetectConfig()) -> List[Dict]:
    """The detector stage and detection repeated for each seed (the 70/30 split and the balanced
    subsets change; the images and features do not); writes and returns the spread table."""
    per_seed, cache = {}, {}
    for seed in seeds:
        la = make_laood(seed)
        per_seed[seed] = detect(run, train_detectors(run, la), ood_names, replace(config, seed=seed), cache=cache)
    rows = spread_over_seeds(per_seed)
    out = Layout.results(run, Layout.seeds_tag(la.kind.tag(la.get_params()), seeds, la.calibration_size))
    with StagingDir(out, {"seeds": list(seeds), "detector_tag": la.tag}) as tmp:
        write_csv(tmp / SPREAD_CSV, rows)
        write_text(tmp / SPREAD_MD, format_table(rows))
    log.info(f"spread over seeds {list(seeds)} -> {out}")
    return rows


def repeat_over_splits(run: Path, det_dir: Path, ood_names: Sequence[str], splits: Sequence[int],
                       config: DetectConfig = DetectConfig()) -> List[Dict]:
    """The tuned detection repeated for each validation split seed in ``splits`` (the detectors, the features and
    the balanced comparisons stay; the held-out images and so every choice change); writes the mean and standard
    deviation of every column over the splits, at the defaults and tuned, each split's choices and its firsts."""
    cache, per_split = {}, {}
    tag = Path(det_dir).name
    for split in splits:
        detect(run, det_dir, ood_names, replace(config, tune=True, tune_seed=split), cache=cache)
        per_split[split] = Layout.results(run, tag, tuned=True, split=None if split == config.seed else split)
    tables = {which: spread_over_splits({s: read_csv(d / name) for s, d in per_split.items()})
              for which, name in (("defaults", OVERVIEW_CSV), ("tuned", TUNED_OVERVIEW_CSV))}
    rows = [{"table": which, **r} for which, table in tables.items() for r in table]
    choices = {str(s): chosen(read_json(d / TUNING_JSON)) for s, d in per_split.items()}
    firsts = [{"split": s, "table": which, **{r["column"]: r["first"] + (" (tied)" if r["order"] == "tied" else "")
                                              for r in read_csv(d / name) if r["column"] in ("near", "far")}}
              for s, d in per_split.items() for which, name in (("defaults", MARGINS_CSV), ("tuned", TUNED_MARGINS_CSV))
              if (d / name).exists()]
    columns = [c for c in tables["tuned"][0] if c not in ("method", "splits") and not c.endswith(" sd")]
    text = "".join(f"{which.capitalize()}, mean ± sd over validation splits {', '.join(map(str, splits))}:\n\n"
                   f"{format_table(mean_sd_table(table, columns))}\n" for which, table in tables.items())
    if firsts:
        text += "The first in near and far on each split (tied: its margin's interval holds 0):\n\n" + format_table(firsts)
    out = Layout.split_spread(run, tag, splits)
    with StagingDir(out, {"splits": list(splits), "detector_tag": tag}) as tmp:
        write_csv(tmp / SPREAD_CSV, rows)
        write_text(tmp / SPREAD_MD, text)
        write_json(tmp / TUNING_JSON, {"chosen per split": choices, "results": {s: str(d) for s, d in per_split.items()}})
    log.info(f"tuned over validation splits {list(splits)} -> {out}")
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
