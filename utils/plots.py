"""PNG figures beside the detection tables (matplotlib, no display needed)."""
from pathlib import Path
from typing import Dict, List

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure   # no pyplot: figures drawn off screen, no global state or backend to set
from sklearn.metrics import auc, roc_curve

from .io import atomic_path


def _layer_rows(rows: List[Dict]) -> List[Dict]:
    return [r for r in rows if r["row"].startswith("layer ")]


def per_layer_auroc(tables: Dict[str, List[Dict]], path: Path, title: str = "") -> None:
    """AUROC of every layer's detector, one line per OOD set, with the LA-OOD level drawn across."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for i, (name, rows) in enumerate(tables.items()):
        layers = _layer_rows(rows)
        color = f"C{i}"
        ax.plot(range(1, len(layers) + 1), [r["auroc"] for r in layers], "o-", ms=3, color=color, label=name)
        ax.axhline(rows[-1]["auroc"], color=color, ls="--", lw=1)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer (network order)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("AUROC (%)")
    ax.set_title(title or "Per-layer AUROC (dashed: LA-OOD, the maximum over layers)")
    ax.legend(title="OOD set", fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def argmax_counts(tables: Dict[str, List[Dict]], path: Path) -> None:
    """For each OOD set, how many OOD images had their maximum score at each layer."""
    names = list(tables)
    fig = Figure(figsize=(9, 1.8 * len(names) + 0.6))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        layers = _layer_rows(tables[name])
        x = np.arange(1, len(layers) + 1)
        ax.bar(x - 0.2, [r["ind_argmax"] for r in layers], width=0.4, label="in-distribution")
        ax.bar(x + 0.2, [r["ood_argmax"] for r in layers], width=0.4, label="OOD")
        ax.set_ylabel(name, fontsize=9)
    axes[0, 0].set_title("Images whose maximum score is at each layer")
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("layer (network order)")
    axes[-1, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _save(fig, path)


def histograms(ind: np.ndarray, oods: Dict[str, np.ndarray], path: Path) -> None:
    """LA-OOD score histograms of the in-distribution test images and each OOD set."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    allv = np.concatenate([ind, *oods.values()])
    bins = np.linspace(np.percentile(allv, 0.5), np.percentile(allv, 99.5), 60)
    ax.hist(ind, bins=bins, density=True, alpha=0.5, label="in-distribution (test)", color="k")
    for name, s in oods.items():
        ax.hist(s, bins=bins, density=True, histtype="step", lw=1.5, label=name)
    ax.set_xlabel("LA-OOD score (max over layers of -decision function; larger = more OOD)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _save(fig, path)


def roc_curves(curves: Dict[str, tuple], path: Path, title: str) -> None:
    """ROC curves (OOD positive) of several methods on one comparison: ``{method: (ind, ood)}``."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    styles = ["-", "--", "-.", ":"]
    for i, (method, (ind, ood)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(ind)), np.ones(len(ood))], np.r_[ind, ood])
        auroc = 100 * auc(fpr, tpr)
        # Ten colours, then the line style changes, so no two curves look alike.
        ax.plot(fpr, tpr, label=f"{method} ({auroc:.1f})", lw=1.3, ls=styles[i // 10 % len(styles)],
                color=f"C{i % 10}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD caught)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right", title="method (AUROC)", title_fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
