"""The paper-style table: LA-OOD on each backbone and OOD set, with Energy and LA-OOD tail + Energy beside it.

    python collect_results.py --models vgg16 resnet34 densenet100
    python collect_results.py --models vgg16 resnet34 densenet100 resnet20 resnet56 --tuned

``--tuned`` collects the results of ``detect_oods.py --tune`` instead: per backbone, every method's near, far and
mean AUROC at the defaults and tuned on the validation split, and which method is first in each
(results/tuned_table.md and .csv).

For each model it takes the newest detection results of the given data tag and detector tag under
``--runs-root`` (one checkpoint per model: pass --run to choose), and writes results/paper_table.md and
.csv with each backbone's test accuracy (from its saved test logits) above the table.
"""
import argparse
import csv
import logging
from pathlib import Path

import numpy as np

from models import list_models
from utils.runtime import run_script
from utils.features import load_features
from utils.io import format_table, read_json, write_csv, write_text
from utils.paths import OVERVIEW_CSV, RUN_RECORD, SUMMARY_CSV, TUNED_OVERVIEW_CSV, Layout
from utils.tables import ORACLE, paper_table

log = logging.getLogger("collect_results")
COLUMNS = {"auroc": "AUROC", "fpr95_ood": "FPR95 (OOD positive, original code)",
           "fpr95_ind": "FPR95 (ID positive, Hendrycks & Gimpel)", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out",
           "energy_auroc": "Energy AUROC", "tail_energy_auroc": "LA-OOD tail + Energy AUROC"}


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: collect the paper-style table", add_help=True)
    parser.add_argument("--models", nargs="+", choices=list_models(), default=["vgg16", "resnet34", "densenet100"],
                        help="backbones, one row group each")
    parser.add_argument("--ind", default="cifar10", help="in-distribution set of the runs")
    parser.add_argument("--data-tag", default="trainall-testall-ood10000-seed0", help="data tag of the runs")
    parser.add_argument("--detector-tag", default="ocsvm-cal5000-seed0",
                        help="detector tag of the results (a calibrated one, for LA-OOD tail + Energy)")
    parser.add_argument("--run", action="append", default=[], metavar="MODEL=RESULTS_DIR",
                        help="use this results directory for MODEL instead of searching; repeatable")
    parser.add_argument("--runs-root", type=Path, default=Layout.runs_root, help="root of the runs")
    parser.add_argument("--out-root", type=Path, default=Layout.collected_root, help="where the table goes")
    parser.add_argument("--tuned", action="store_true",
                        help="collect the tables of detect_oods.py --tune (at the defaults and tuned) instead")
    return parser


def find_results(args, model: str):
    chosen = dict(spec.split("=", 1) for spec in args.run)
    if model in chosen:
        return Path(chosen[model])
    runs = Layout(runs_root=args.runs_root).runs_of(args.ind, model, args.data_tag)    # float32 runs only
    found = [r for r in (Layout.results(run, args.detector_tag, tuned=args.tuned) for run in runs)
             if (r / SUMMARY_CSV).exists()]
    return max(found, key=lambda r: (r / SUMMARY_CSV).stat().st_mtime) if found else None


def read_summary(path: Path):
    with open(path) as f:
        return [{k: (float(v) if k not in ("ood", "method", "n") and v not in ("", None) else v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def _f(value) -> float:
    return float(value) if value not in ("", None) else float("nan")


def _layer_adaptive(method: str) -> bool:
    return method.startswith("LA-OOD") or method == "early exit"


def tuned_tables(args):
    """Near, far and mean AUROC of every method at the defaults and tuned, per backbone, and the first in each."""
    rows, firsts = [], []
    for model in args.models:
        results = find_results(args, model)
        if results is None or not (results / TUNED_OVERVIEW_CSV).exists():
            log.info(f"{model}: no results of detect_oods.py --tune under {args.runs_root}")
            continue
        tables = {which: {r["method"]: r for r in csv.DictReader(open(results / name))}
                  for which, name in (("defaults", OVERVIEW_CSV), ("tuned", TUNED_OVERVIEW_CSV))}
        for method in tables["defaults"]:
            if method == ORACLE:
                continue
            rows.append({"model": model, "method": method,
                         **{f"{k} ({which})": _f(tables[which][method][k]) for which in tables
                            for k in ("near", "far", "mean")}})
        for which, table in tables.items():
            methods = [m for m in table if m != ORACLE]
            sets = [k for k in table[methods[0]] if k not in ("method", "near", "far", "mean")]
            for k in ("near", "far"):
                if table[methods[0]][k] in ("", None):      # no set of that kind in the run
                    continue
                best = max(methods, key=lambda m: float(table[m][k]))
                other = max((m for m in methods if not _layer_adaptive(m)), key=lambda m: float(table[m][k]))
                # The first method's largest shortfall on one set against that set's best method.
                gap = lambda pool: max(max(float(table[m][x]) for m in pool) - float(table[best][x])  # noqa: E731
                                       for x in sets)
                rivals = [m for m in methods if not _layer_adaptive(m)]
                firsts.append({"model": model, "table": which, "mean": k, "first": best, "auroc": float(table[best][k]),
                               "largest shortfall on a set": gap(methods),
                               "... against the other methods": gap(rivals) if _layer_adaptive(best) else gap(methods),
                               "first other method": other, "its auroc": float(table[other][k])})
    if not rows:
        raise FileNotFoundError(f"no results of detect_oods.py --tune under {args.runs_root}")
    layout = Layout(collected_root=args.out_root)
    write_csv(layout.collected_root / "tuned_table.csv", rows)
    text = ((format_table(firsts) if firsts else "") + "\n" + near_far_grid(rows, "tuned") + "\n"
            + format_table(rows))
    write_text(layout.collected_root / "tuned_table.md", text)
    print(text)
    return rows


def near_far_grid(rows, which: str) -> str:
    """Markdown: a row per method, a column per backbone, "near / far" AUROC of the ``which`` table, the best of
    each column's near and far in bold."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["model"], r["method"]): r for r in rows}
    def column_best(m, k):      # NaN where the backbone's run has no set of that kind
        values = [v for x in methods if (m, x) in cell and not np.isnan(v := cell[m, x][f"{k} ({which})"])]
        return max(values, default=float("nan"))
    best = {(m, k): column_best(m, k) for m in models for k in ("near", "far")}

    def fmt(m, x, k):
        v = cell[m, x][f"{k} ({which})"]
        return f"**{v:.2f}**" if v == best[m, k] else f"{v:.2f}"
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for x in methods:
        lines.append(f"| {x} | " + " | ".join(f"{fmt(m, x, 'near')} / {fmt(m, x, 'far')}" if (m, x) in cell else ""
                                               for m in models) + " |")
    return "\n".join(lines) + "\n"


def main(args):
    if args.tuned:
        return tuned_tables(args)
    runs, lines = {}, []
    for model in args.models:
        results = find_results(args, model)
        if results is None:
            log.info(f"{model}: no results {args.data_tag}/results/{args.detector_tag} under {args.runs_root}; "
                     f"run run_pipeline.py --model {model} --calibration-size 5000 first")
            continue
        record = read_json(results / RUN_RECORD) or {}
        test = load_features(Path(record.get("features", results.parent.parent)), "test")
        acc = 100 * float((np.asarray(test["logits"]).argmax(1) == test["labels"]).mean())
        norm = (record.get("normalization") or {}).get("name", "imagenet")
        lines.append(f"- {model}: {acc:.2f}% test accuracy on {len(test['labels'])} {args.ind} test images "
                     f"({norm} normalisation); results {results}")
        variants = {n: v.split(" ")[0] for n, v in record.get("variants", {}).items()}
        runs[model] = (read_summary(results / SUMMARY_CSV), variants)
    if not runs:
        raise FileNotFoundError(f"no results to collect under {args.runs_root}")
    rows = [{("model" if k == "model" else "OOD set" if k == "ood" else COLUMNS[k]): v for k, v in r.items()}
            for r in paper_table(runs)]
    write_csv(Layout(collected_root=args.out_root).paper_table("csv"), rows)
    text = "\n".join(lines) + "\n\n" + format_table(rows)
    write_text(Layout(collected_root=args.out_root).paper_table("md"), text)
    print(text)
    return rows


if __name__ == "__main__":
    run_script(main, get_args_parser)
