"""Stages 3 and 4: fit the per-layer detectors and score every OOD set (behind the scripts)."""
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import joblib
import numpy as np

from .detectors import LAOOD, TAIL_LEVEL, Calibration, calibration_split, early_exit, exit_cost, tail_plus_energy
from .features import load_features
from .io import MANIFEST, StagingDir, format_table, is_complete, read_json, save_npy, write_csv, write_json, \
    write_text
from .metrics import METRICS, ood_metrics
from .paths import Layout, layer_file


def detector_settings(run_manifest_sha: str, la: LAOOD, n_train: int) -> Dict:
    settings = {"checkpoint_sha256": run_manifest_sha, "detector": la.detector, "gammas": list(la.gammas),
                "nu": la.nu, "seed": la.seed, "select_size": la.select_size, "prune": la.prune, "n_train": n_train,
                "calibration_size": la.calibration_size}
    if la.calibration_size:   # calibrations written before the tail quantiles existed are refitted
        settings["tail_level"] = TAIL_LEVEL
    return settings


def train_detectors(run: Path, la: LAOOD, force: bool = False, log=print) -> Path:
    """Fit ``la`` on the run's in-distribution train features and save one pickle per layer."""
    train = load_features(run, "train")
    sha = train["manifest"]["settings"]["checkpoint_sha256"]
    settings = detector_settings(sha, la, len(train["logits"]))
    out = Layout.detectors(run, la.tag)
    if is_complete(out, settings) and not force:
        log(f"detectors already complete in {out}")
        return out
    start = time.time()
    if la.calibration_size:
        la.fit_calibrated(train["layers"])
    else:
        la.fit(train["layers"])
    seconds = time.time() - start
    with StagingDir(out, settings, {"layers": len(la.detectors_), "fit_seconds": seconds}) as tmp:
        for i, det in enumerate(la.detectors_):
            joblib.dump(det, tmp / layer_file(i, "joblib"))
        write_csv(tmp / "selection.csv", [_flat_record(r) for r in la.records_])
        if la.calibration_ is not None:
            cal = la.calibration_
            write_json(tmp / "calibration.json", {"mean": cal.mean.tolist(), "std": cal.std.tolist(),
                                                  "tail_level": TAIL_LEVEL, "tail": cal.tail.tolist()})
    held = f" ({la.calibration_size} more held back to calibrate)" if la.calibration_size else ""
    log(f"{len(la.detectors_)} {la.detector} detectors fitted on {len(train['logits']) - la.calibration_size} "
        f"images{held} in {seconds:.0f}s -> {out}")
    return out


def _flat_record(record: Dict) -> Dict:
    rec = {k: v for k, v in record.items() if k != "errors"}
    for gamma, err in record.get("errors", {}).items():
        rec[f"error@{gamma:g}"] = round(err, 5)
    return rec


def load_detectors(directory: Path, expect_sha: Optional[str] = None) -> LAOOD:
    """The fitted per-layer detectors of a directory written by :func:`train_detectors`."""
    manifest = read_json(Path(directory) / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"no trained detectors in {directory}; run train_ood_detectors.py first")
    s = manifest["settings"]
    if expect_sha and s["checkpoint_sha256"] != expect_sha:
        raise ValueError(f"detectors in {directory} were fitted on features of another checkpoint "
                         f"({s['checkpoint_sha256'][:8]}, expected {expect_sha[:8]}); retrain them")
    la = LAOOD(detector=s["detector"], gammas=s["gammas"], nu=s["nu"], seed=s["seed"],
               select_size=s["select_size"], prune=s["prune"], calibration_size=s.get("calibration_size", 0))
    calib = read_json(Path(directory) / "calibration.json")
    if calib is not None:
        tail = np.array(calib["tail"]) if "tail" in calib else None
        la.calibration_ = Calibration(np.array(calib["mean"]), np.array(calib["std"]), tail)
    for i in range(manifest["layers"]):
        path = Path(directory) / layer_file(i, "joblib")
        if not path.exists():
            raise FileNotFoundError(f"detector of layer {i} is missing ({path}); retrain with --force")
        la.detectors_.append(joblib.load(path))
    return la


def balanced_indices(n_ind: int, n_ood: int, seed: int):
    """Seeded random N = min(n_ind, n_ood) of each side (sorted), never the first N."""
    n = min(n_ind, n_ood)
    rng = np.random.default_rng(seed)
    pick = lambda total: np.arange(total) if total == n else np.sort(rng.choice(total, n, replace=False))  # noqa
    return pick(n_ind), pick(n_ood)


def layer_table(ind: np.ndarray, ood: np.ndarray) -> List[Dict]:
    """One row per layer, the oracle best layer and the LA-OOD maximum, from ``(N, L)`` score matrices."""
    n_layers = ind.shape[1]
    ind_arg = np.bincount(ind.argmax(1), minlength=n_layers)
    ood_arg = np.bincount(ood.argmax(1), minlength=n_layers)
    rows = [{"row": f"layer {i + 1}", **ood_metrics(ind[:, i], ood[:, i]),
             "ind_argmax": int(ind_arg[i]), "ood_argmax": int(ood_arg[i])} for i in range(n_layers)]
    best = max(range(n_layers), key=lambda i: rows[i]["auroc"])
    rows.append({**rows[best], "row": f"best single layer (oracle: layer {best + 1})"})
    rows.append({"row": "LA-OOD (max over layers)", **ood_metrics(ind.max(1), ood.max(1)),
                 "ind_argmax": len(ind), "ood_argmax": len(ood)})
    return rows


BASELINES = ("MSP", "ODIN", "Energy", "Mahalanobis", "KNN")


def baseline_scores(train: Dict, sets: Dict[str, Dict], which: Sequence[str]) -> Dict[str, Dict[str, np.ndarray]]:
    """``{method: {set: scores}}`` of the post-hoc baselines, from the saved logits and penultimate features.

    Mahalanobis and KNN are fitted on the in-distribution train features; ODIN needs scores stored by
    ``save_inter_outputs.py --odin`` and is left out (with a note) where they are missing.
    """
    from .baselines import KNN, Mahalanobis, energy, msp
    out: Dict[str, Dict[str, np.ndarray]] = {}
    if "MSP" in which:
        out["MSP"] = {n: msp(f["logits"]) for n, f in sets.items()}
    if "ODIN" in which:
        if all("odin" in f for f in sets.values()):
            out["ODIN"] = {n: f["odin"] for n, f in sets.items()}
        else:
            print("ODIN left out: its scores were not saved (run save_inter_outputs.py --odin)")
    if "Energy" in which:
        out["Energy"] = {n: energy(f["logits"]) for n, f in sets.items()}
    if "Mahalanobis" in which:
        maha = Mahalanobis().fit(train["penultimate"], train["labels"])
        out["Mahalanobis"] = {n: maha.score(f["penultimate"]) for n, f in sets.items()}
    if "KNN" in which:
        knn = KNN(k=50).fit(train["penultimate"])
        out["KNN"] = {n: knn.score(f["penultimate"]) for n, f in sets.items()}
    return out


def energy_z(la: LAOOD, train: Dict, sets: Dict[str, Dict]) -> Dict[str, np.ndarray]:
    """The energy score of every set, standardised on the train images held back for calibration."""
    from .baselines import energy
    held, _ = calibration_split(len(train["logits"]), la.calibration_size, la.seed)
    ref = energy(train["logits"][held])
    return {n: (energy(f["logits"]) - ref.mean()) / ref.std() for n, f in sets.items()}


def calibrated_variants(la: LAOOD, scores: Dict[str, np.ndarray], arch: str, num_classes: int,
                        threshold: float = 0.99, k: int = 2, energy: Optional[Dict[str, np.ndarray]] = None):
    """Calibrated LA-OOD, early exit and (given the standardised ``energy`` scores and tail quantiles)
    LA-OOD tail + Energy, per set; and the early-exit table (stops and MAC cost)."""
    from models import create_model
    cal = la.calibration_
    exits = {n: early_exit(s, cal, threshold, k) for n, s in scores.items()}
    cumulative, total = create_model(arch, num_classes).tap_macs()
    table = [{"set": n, "stopped_pct": 100 * float((stop >= 0).mean()),
              "mac_fraction": exit_cost(stop, cumulative, total),
              "mean_stop_layer": float(stop[stop >= 0].mean() + 1) if (stop >= 0).any() else float("nan")}
             for n, (_, stop) in exits.items()]
    variants = {"LA-OOD (calibrated)": {n: cal.max_z(s) for n, s in scores.items()},
                f"early exit (p>{threshold:g} at {k} layers)": {n: e[0] for n, e in exits.items()}}
    if energy is not None and cal.tail is not None:
        variants["LA-OOD tail + Energy"] = {n: tail_plus_energy(s, cal, energy[n]) for n, s in scores.items()}
    elif energy is not None:
        print("LA-OOD tail + Energy left out: these detectors' calibration has no tail quantiles "
              "(refit them with train_ood_detectors.py --force)")
    return variants, table


def detect(run: Path, det_dir: Path, ood_names: Sequence[str], seed: int = 0, n_jobs: int = 1,
           baselines: Sequence[str] = (), exit_threshold: float = 0.99, exit_k: int = 2, log=print,
           record: Optional[Dict] = None, baseline_cache: Optional[Dict] = None) -> List[Dict]:
    """Score the test split and every OOD set; write per-set tables, the summary and a run record.

    The summary has one row per OOD set and method: LA-OOD, the best single layer (an oracle: chosen
    with the OOD labels), the calibrated maximum and early exit where the detectors were calibrated,
    and any ``baselines``, all on the same balanced comparisons. The baselines' scores do not depend on
    the detectors: a ``baseline_cache`` dict passed to several calls computes them once.
    """
    start = time.time()
    test = load_features(run, "test")
    sha = test["manifest"]["settings"]["checkpoint_sha256"]
    la = load_detectors(det_dir, expect_sha=sha)
    la.n_jobs = n_jobs
    if not ood_names:
        raise ValueError(f"no OOD sets to score in {run / 'features'}; generate and save some first")
    oods = {name: load_features(run, name, expect_sha=sha) for name in ood_names}
    out = Layout.results(run, la.tag)
    scores = {name: la.score_layers(f["layers"]) for name, f in {"test": test, **oods}.items()}
    cache = {} if baseline_cache is None else baseline_cache
    need_baselines = bool(baselines) and "scores" not in cache
    # Read once, and only where something needs the train split (memory-mapped: only used arrays are read).
    train = load_features(run, "train") if la.calibration_ is not None or need_baselines else None
    others, exit_table = {}, None
    if la.calibration_ is not None:
        fs = test["manifest"]["settings"]
        ez = energy_z(la, train, {"test": test, **oods})
        others, exit_table = calibrated_variants(la, scores, fs["arch"], test["logits"].shape[1], exit_threshold,
                                                 exit_k, ez)
    if baselines:
        if need_baselines:
            cache["scores"] = baseline_scores(train, {"test": test, **oods}, baselines)
        others.update(cache["scores"])
    ind_scores = scores["test"]
    summary, tables = [], {}
    comparisons = [(name, *balanced_indices(len(ind_scores), len(scores[name]), seed)) for name in oods]
    comparisons.append(("combined", np.arange(len(ind_scores)), None))
    for name, i_idx, o_idx in comparisons:
        pick = (lambda s: np.concatenate([s[n] for n in oods])) if o_idx is None else (lambda s: s[name][o_idx])  # noqa
        ood_scores = pick(scores)
        tables[name] = layer_table(ind_scores[i_idx], ood_scores)
        n = f"{len(i_idx)}+{len(ood_scores)}" if o_idx is None else len(i_idx)
        la_row, oracle = tables[name][-1], tables[name][-2]
        summary.append({"ood": name, "method": "LA-OOD", "n": n, **_pick(la_row)})
        summary.append({"ood": name, "method": oracle["row"].replace("best single layer ", "best layer "), "n": n,
                        **_pick(oracle)})
        for method, s in others.items():
            summary.append({"ood": name, "method": method, "n": n,
                            **ood_metrics(s["test"][i_idx], pick(s))})
    for name, rows in tables.items():
        write_csv(out / f"{name}.csv", rows)
    _plot(out, tables, scores, others, comparisons, oods)
    for name, s in scores.items():
        save_npy(out / "scores" / f"{name}.npy", s.astype(np.float32))
    if exit_table is not None:
        write_csv(out / "early_exit.csv", exit_table)
    write_csv(out / "summary.csv", summary)
    write_text(out / "summary.md", format_table(summary))
    write_json(out / "run.json", {
        "checkpoint_sha256": sha, "features": str(run), "detectors": str(det_dir), "eval_seed": seed,
        "sets": {n: f["manifest"]["settings"]["images"] for n, f in {"test": test, **oods}.items()},
        "counts": {n: len(f["logits"]) for n, f in {"test": test, **oods}.items()},
        "detector_settings": read_json(Path(det_dir) / MANIFEST)["settings"], "other_methods": list(others),
        "detect_seconds": time.time() - start, "versions": package_versions(), **(record or {})})
    log(f"results -> {out}")
    return summary


def spread_over_seeds(per_seed: Dict[int, List[Dict]]) -> List[Dict]:
    """Mean and sample standard deviation over seeds of every metric, per OOD set and method."""
    groups: Dict[tuple, List[Dict]] = {}
    for rows in per_seed.values():
        for r in rows:
            method = "best layer (oracle)" if r["method"].startswith("best layer") else r["method"]
            groups.setdefault((r["ood"], method), []).append(r)
    out = []
    for (ood, method), rows in groups.items():
        row = {"ood": ood, "method": method, "seeds": len(rows)}
        for m in METRICS:
            values = np.array([r[m] for r in rows], dtype=float)
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(row)
    return out


def repeat_over_seeds(run: Path, make_laood, seeds: Sequence[int], ood_names: Sequence[str], log=print,
                      **detect_kwargs) -> List[Dict]:
    """The detector stage and detection repeated for each seed (the 70/30 split and the balanced
    subsets change; the images and features do not); writes and returns the spread table."""
    per_seed, cache = {}, {}
    for seed in seeds:
        la = make_laood(seed)
        per_seed[seed] = detect(run, train_detectors(run, la, log=log), ood_names, seed=seed, log=log,
                                baseline_cache=cache, **detect_kwargs)
    rows = spread_over_seeds(per_seed)
    out = Layout.results(run, Layout.seeds_tag(la.detector, seeds, la.calibration_size))
    write_csv(out / "spread.csv", rows)
    write_text(out / "spread.md", format_table(rows))
    log(f"spread over seeds {list(seeds)} -> {out}")
    return rows


def _plot(out: Path, tables, scores, others, comparisons, oods) -> None:
    """Per-layer AUROC, argmax counts, score histograms and ROC curves, as PNG beside the tables."""
    from . import plots
    per_set = {n: rows for n, rows in tables.items() if n != "combined"}
    plots.per_layer_auroc(per_set, out / "per_layer_auroc.png")
    plots.argmax_counts(per_set, out / "argmax_counts.png")
    plots.histograms(scores["test"].max(1), {n: scores[n].max(1) for n in oods}, out / "histograms.png")
    for name, i_idx, o_idx in comparisons:
        if o_idx is None:
            continue
        curves = {"LA-OOD": (scores["test"].max(1)[i_idx], scores[name].max(1)[o_idx])}
        curves.update({m: (s["test"][i_idx], s[name][o_idx]) for m, s in others.items()})
        plots.roc_curves(curves, out / f"roc_{name}.png", f"ROC: {name}")


def _pick(row: Dict) -> Dict:
    return {m: row[m] for m in METRICS}


def package_versions() -> Dict[str, str]:
    import sklearn
    import torch
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__}
