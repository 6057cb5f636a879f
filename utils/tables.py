"""Pure table functions: balanced comparisons, per-layer tables, summaries, spread over seeds.

Nothing here reads or writes files; every function maps scores or rows to rows.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bootstrap import Draws, margin_text, rank_column
from .sets import NEAR_OODS, OOD_SETS
from .metrics import METRICS, ood_metrics

ORACLE = "best layer (oracle)"


def balanced_indices(n_ind: int, n_ood: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded random N = min(n_ind, n_ood) of each side (sorted), never the first N."""
    n = min(n_ind, n_ood)
    rng = np.random.default_rng(seed)
    pick = lambda total: np.arange(total) if total == n else np.sort(rng.choice(total, n, replace=False))  # noqa
    return pick(n_ind), pick(n_ood)


def comparisons(n_ind: int, ood_sizes: Dict[str, int], seed: int) -> List[Tuple[str, np.ndarray, Optional[np.ndarray]]]:
    """``(name, in-distribution indices, OOD indices)`` of every balanced comparison, then ``combined``:
    all test images against all OOD images of every set (OOD indices None)."""
    out = [(name, *balanced_indices(n_ind, n, seed)) for name, n in ood_sizes.items()]
    out.append(("combined", np.arange(n_ind), None))
    return out


def pick_ood(scores: Dict[str, np.ndarray], name: str, idx: Optional[np.ndarray], oods: Sequence[str]) -> np.ndarray:
    """The OOD side of one comparison: ``scores[name][idx]``, or every OOD set's scores for ``combined``."""
    return np.concatenate([scores[n] for n in oods]) if idx is None else scores[name][idx]


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


def oracle_row(table: List[Dict], ood: str, n) -> Dict:
    """The summary row of the oracle best single layer of a :func:`layer_table` (chosen with OOD labels)."""
    best = table[-2]
    layer = best["row"].rsplit(" ", 1)[-1].rstrip(")")
    return {"ood": ood, "method": ORACLE, "layer": int(layer), "n": n, **{m: best[m] for m in METRICS}}


def method_row(ood: str, method: str, n, ind: np.ndarray, ood_scores: np.ndarray) -> Dict:
    return {"ood": ood, "method": method, "n": n, **ood_metrics(ind, ood_scores)}


def spread_over_seeds(per_seed: Dict[int, List[Dict]]) -> List[Dict]:
    """Mean and sample standard deviation over seeds of every metric, per OOD set and method."""
    groups: Dict[tuple, List[Dict]] = {}
    for rows in per_seed.values():
        for r in rows:
            groups.setdefault((r["ood"], r["method"]), []).append(r)
    out = []
    for (ood, method), rows in groups.items():
        row = {"ood": ood, "method": method, "seeds": len(rows)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_sd([r[m] for r in rows])
        out.append(row)
    return out


def mean_sd(values) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def spread_over_splits(per_split: Dict[int, List[Dict]]) -> List[Dict]:
    """Mean and sample standard deviation over validation splits of every column of an overview (the AUROC per
    set, near, far, mean), per method: ``{"method", "splits", col: mean, col + " sd": sd}``."""
    groups: Dict[str, List[Dict]] = {}
    for rows in per_split.values():
        for r in rows:
            groups.setdefault(r["method"], []).append(r)
    out = []
    for method, rows in groups.items():
        row = {"method": method, "splits": len(rows)}
        for col in (k for k in rows[0] if k != "method"):
            values = [r[col] for r in rows if r.get(col) is not None]
            if values:
                row[col], row[f"{col} sd"] = mean_sd(values)
        out.append(row)
    return out


def mean_sd_table(rows: List[Dict], columns: Sequence[str]) -> List[Dict]:
    """Rows of :func:`spread_over_splits` as text cells "mean +- sd" (for markdown)."""
    return [{"method": r["method"], **{c: f"{r[c]:.2f} ± {r[c + ' sd']:.2f}" for c in columns if c in r}}
            for r in rows]


PAPER_SETS = OOD_SETS


def paper_table(runs: Dict[str, Tuple[List[Dict], Dict[str, str]]]) -> List[Dict]:
    """The paper-style table: rows model x OOD set, LA-OOD's metrics with Energy and LA-OOD tail + Energy
    AUROC beside them. ``runs`` maps a model name to ``(summary rows, {set: variant note})``."""
    out = []
    for model, (rows, variants) in runs.items():
        by = {(r["ood"], r["method"]): r for r in rows}
        sets = [s for s in PAPER_SETS if (s, "LA-OOD") in by]
        sets += sorted({r["ood"] for r in rows if r["ood"] not in sets and r["ood"] != "combined"})
        for s in sets:
            la = by[(s, "LA-OOD")]
            row = {"model": model, "ood": s + (f" ({variants[s]})" if variants.get(s) else ""),
                   "auroc": la["auroc"], "fpr95_ood": la["fpr95_ood"], "fpr95_ind": la["fpr95_ind"],
                   "aupr_in": la["aupr_in"], "aupr_out": la["aupr_out"]}
            for method, col in (("Energy", "energy_auroc"), ("LA-OOD tail + Energy", "tail_energy_auroc")):
                row[col] = by[(s, method)]["auroc"] if (s, method) in by else None
            out.append(row)
    return out


def overview(summary: List[Dict], near: Sequence[str] = NEAR_OODS, metric: str = "auroc") -> List[Dict]:
    """One row per method: ``metric`` on every OOD set, then ``near`` (the mean over the near-OOD sets present),
    ``far`` (over the others) and ``mean`` (over all), the ``combined`` comparison left out."""
    by: Dict[str, Dict[str, float]] = {}
    for r in summary:
        if r["ood"] != "combined":
            by.setdefault(r["method"], {})[r["ood"]] = r[metric]
    rows = []
    for method, values in by.items():
        sets = list(values)
        near_sets = [s for s in sets if s in near]
        far_sets = [s for s in sets if s not in near]
        row = {"method": method, **values}
        row["near"] = float(np.mean([values[s] for s in near_sets])) if near_sets else None
        row["far"] = float(np.mean([values[s] for s in far_sets])) if far_sets else None
        row["mean"] = float(np.mean(list(values.values())))
        rows.append(row)
    return rows


def margin_rows(draws: Draws, near: Sequence[str], is_rival) -> List[Dict]:
    """One row per column (each OOD set, near, far, mean): the first method and those with the same AUROC on every
    draw (``same as``), its margin over the runner-up and over the best method of the other kind (the best rival,
    ``is_rival``: not layer-adaptive, when a layer-adaptive method is first; the best layer-adaptive method when a
    rival is) with their 95% intervals, and the methods tied with it (a difference whose interval holds
    0); ``order`` says "first" or "tied"."""
    rows = []
    for column, sets in draws.columns(near).items():
        top = rank_column(draws, sets, draws.methods, is_rival)
        margin, other = top["margin"], top["contrast margin"]
        rows.append({"column": column, "first": top["first"], "auroc": top["auroc"], "same as": "; ".join(top["same"]),
                     "order": "tied" if top["tied"] else "first", "tied with": "; ".join(top["tied"]),
                     "runner-up": top["runner-up"], "margin": margin and margin.value,
                     "margin low": margin and margin.low, "margin high": margin and margin.high,
                     "first is layer-adaptive": not top["first is a rival"],
                     "best of the other kind": top["contrast"], "other kind margin": other and other.value,
                     "other kind low": other and other.low, "other kind high": other and other.high})
    return rows


def leaders(rows: List[Dict]) -> Dict[str, set]:
    """Per column of :func:`margin_rows`: the methods no other method is ahead of beyond the noise (the first,
    those with its scores and those tied with it), the ones a table sets in bold."""
    return {r["column"]: {r["first"], *filter(None, r["same as"].split("; ")), *filter(None, r["tied with"].split("; "))}
            for r in rows}


def order_text(rows: List[Dict]) -> str:
    """Markdown lines, one per column of :func:`margin_rows`: the first (or the tied methods) with the margins."""
    lines = []
    for r in rows:
        first = r["first"] + (f" (the same scores: {r['same as'].replace('; ', ', ')})" if r["same as"] else "")
        head = f"tied: {first}, {r['tied with'].replace('; ', ', ')}" if r["order"] == "tied" else f"first: {first}"
        parts = [f"- {r['column']}: {head} ({r['auroc']:.2f})"]
        if r["runner-up"] is not None:
            parts.append(f"over {r['runner-up']} {margin_text(r['margin'], r['margin low'], r['margin high'])}")
        if r["other kind margin"] is not None:
            kind = "method that is not layer-adaptive" if r["first is layer-adaptive"] else "layer-adaptive method"
            parts.append(f"over the best {kind}, {r['best of the other kind']}, "
                         f"{margin_text(r['other kind margin'], r['other kind low'], r['other kind high'])}")
        lines.append("; ".join(parts))
    return "\n".join(lines) + "\n"
