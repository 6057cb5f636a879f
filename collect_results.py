"""The paper-style table: LA-OOD on each backbone and OOD set, with Energy and LA-OOD tail + Energy beside it.

    python collect_results.py --models vgg16 resnet34 densenet100
    python collect_results.py --models vgg16 resnet34 densenet100 --ind cifar10 cifar100   # both columns
    python collect_results.py --models vgg16 resnet34 densenet100 resnet20 resnet56 --tuned
    python collect_results.py --models vgg16 resnet34 densenet100 resnet20 resnet56 --every-method

With several ``--ind`` sets the paper table puts them side by side, as the paper's two columns (the other CIFAR
set is one row, "other CIFAR"). ``--tuned`` collects the results of ``detect_oods.py --tune`` instead: per
backbone, every method's near, far and mean AUROC at the defaults and tuned on the validation split, and for each
column the first method with its margin over the runner-up and over the best method of the other kind (the
best method that is not layer-adaptive when a layer-adaptive one is first, the best layer-adaptive one when a
rival is), each with its 95% paired-bootstrap interval, "tied" where an interval holds 0, and the first
method's largest shortfall on one set with its interval (results/tuned_table.md and .csv).

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
from utils.bootstrap import Draws, margin_text, shortfalls
from utils.runtime import run_script
from utils.features import load_features
from utils.io import format_table, read_csv, read_json, write_csv, write_text
from utils.methods import is_layer_adaptive, list_methods
from utils.paths import BOOTSTRAP, OVERVIEW_CSV, RUN_RECORD, SUMMARY_CSV, TUNED_BOOTSTRAP, TUNED_OVERVIEW_CSV, Layout
from utils.sets import IND_SETS
from utils.tables import ORACLE, leaders, margin_rows, order_text, paper_table

log = logging.getLogger("collect_results")
COLUMNS = {"auroc": "AUROC", "fpr95_ood": "FPR95 (OOD positive, original code)",
           "fpr95_ind": "FPR95 (ID positive, Hendrycks & Gimpel)", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out",
           "energy_auroc": "Energy AUROC", "tail_energy_auroc": "LA-OOD tail + Energy AUROC"}


def get_args_parser():
    parser = argparse.ArgumentParser("LA-OOD: collect the paper-style table", add_help=True)
    parser.add_argument("--models", nargs="+", choices=list_models(), default=["vgg16", "resnet34", "densenet100"],
                        help="backbones, one row group each")
    parser.add_argument("--ind", nargs="+", default=["cifar10"], metavar="SET",
                        help="in-distribution set(s) of the runs; several: side by side")
    parser.add_argument("--data-tag", default="trainall-testall-ood10000-seed0", help="data tag of the runs")
    parser.add_argument("--detector-tag", default="ocsvm-cal5000-seed0",
                        help="detector tag of the results (a calibrated one, for LA-OOD tail + Energy)")
    parser.add_argument("--run", action="append", default=[], metavar="[IND:]MODEL=RESULTS_DIR",
                        help="use this results directory for MODEL (on IND; default the first --ind) instead of "
                             "searching; repeatable")
    parser.add_argument("--runs-root", type=Path, default=Layout.runs_root, help="root of the runs")
    parser.add_argument("--out-root", type=Path, default=Layout.collected_root, help="where the table goes")
    parser.add_argument("--tuned", action="store_true",
                        help="collect the tables of detect_oods.py --tune (at the defaults and tuned) instead")
    parser.add_argument("--every-method", action="store_true",
                        help="every method on every set per backbone, the first and the methods tied with it in "
                             "bold (with --tuned: the tuned table)")
    return parser


def find_results(args, model: str, ind: str):
    chosen = {}
    for spec in args.run:
        key, path = spec.split("=", 1)
        chosen[key if ":" in key else f"{args.ind[0]}:{key}"] = path
    if f"{ind}:{model}" in chosen:
        return Path(chosen[f"{ind}:{model}"])
    runs = Layout(runs_root=args.runs_root).runs_of(ind, model, args.data_tag)    # float32 runs only
    found = [r for r in (Layout.results(run, args.detector_tag, tuned=args.tuned) for run in runs)
             if (r / SUMMARY_CSV).exists()]
    return max(found, key=lambda r: (r / SUMMARY_CSV).stat().st_mtime) if found else None


def _f(value) -> float:
    return float(value) if value not in ("", None) else float("nan")


def _layer_adaptive(method: str) -> bool:
    return is_layer_adaptive(method) if method in list_methods() else method.startswith("LA-OOD")


def _runs(args):
    """``(label, ind, model)`` of every backbone and in-distribution set asked for (the label names the set only
    when there are several)."""
    return [(model if len(args.ind) == 1 else f"{model} ({ind})", ind, model) for ind in args.ind
            for model in args.models]


def publish(args, name: str, rows, text: str) -> list:
    """Write a collected table: its rows as ``name``.csv and its Markdown as ``name``.md under ``--out-root``, and
    print the Markdown."""
    layout = Layout(collected_root=args.out_root)
    write_csv(layout.collected(name, "csv"), rows)
    write_text(layout.collected(name, "md"), text)
    print(text)
    return rows


def column_order(draws: Draws, near) -> list:
    """:func:`utils.tables.margin_rows` of one table, rivals being the methods that are not layer-adaptive."""
    return margin_rows(draws, near, lambda m: not _layer_adaptive(m))


def order_rows(label: str, which: str, draws: Draws, near, margins=None) -> list:
    """The first in near and far of one table with its margins, ties and largest per-set shortfall (intervals
    from the paired bootstrap ``draws``; ``margins``: its :func:`column_order`, if already computed)."""
    rows = []
    for r in margins or column_order(draws, near):
        if r["column"] not in ("near", "far"):
            continue
        fall = shortfalls(draws, r["first"], draws.methods)
        worst = max(fall, key=lambda x: fall[x].value)
        rows.append({"model": label, "table": which, "mean": r["column"],
                     "first": (r["first"] + (f" (= {r['same as']})" if r["same as"] else "")
                               + (f"; tied: {r['tied with']}" if r["order"] == "tied" else "")),
                     "auroc": r["auroc"], "runner-up": r["runner-up"],
                     "margin [95%]": margin_text(r["margin"], r["margin low"], r["margin high"]),
                     "best of the other kind": r["best of the other kind"],
                     "its margin [95%]": margin_text(r["other kind margin"], r["other kind low"], r["other kind high"]),
                     "largest shortfall on a set": (f"{worst}, under {fall[worst].a}: {fall[worst].text()}"
                                                    if fall[worst].value > 0 else "none: the best on every set")})
    return rows


def tuned_tables(args):
    """Near, far and mean AUROC of every method at the defaults and tuned, per backbone, and the first in each with
    its margins and their intervals (or the methods tied with it)."""
    rows, firsts, lead = [], [], {}
    for label, ind, model in _runs(args):
        results = find_results(args, model, ind)
        if results is None or not (results / TUNED_OVERVIEW_CSV).exists():
            log.info(f"{label}: no results of detect_oods.py --tune under {args.runs_root}")
            continue
        near = (read_json(results / RUN_RECORD) or {}).get("near", [])
        tables = {which: {r["method"]: r for r in csv.DictReader(open(results / name))}
                  for which, name in (("defaults", OVERVIEW_CSV), ("tuned", TUNED_OVERVIEW_CSV))}
        for method in tables["defaults"]:
            if method == ORACLE:
                continue
            rows.append({"model": label, "method": method,
                         **{f"{k} ({which})": _f(tables[which][method][k]) for which in tables
                            for k in ("near", "far", "mean")}})
        for which, npz in (("defaults", BOOTSTRAP), ("tuned", TUNED_BOOTSTRAP)):
            if (results / npz).exists():
                draws = Draws.load(results / npz)
                margins = column_order(draws, near)
                firsts += order_rows(label, which, draws, near, margins)
                lead.update({(label, which, c): names for c, names in leaders(margins).items()})
            else:
                log.info(f"{label}: no {npz} in {results}; rerun detect_oods.py --tune for the margins' intervals")
    if not rows:
        raise FileNotFoundError(f"no results of detect_oods.py --tune under {args.runs_root}")
    if firsts:
        write_csv(Layout(collected_root=args.out_root).collected("tuned_order", "csv"), firsts)
    text = ((format_table(firsts) if firsts else "") + "\n" + near_far_grid(rows, "tuned", lead) + "\n"
            + format_table(rows))
    return publish(args, "tuned_table", rows, text)


def every_method_tables(args):
    """Per backbone, every method's AUROC on every set with the near, far and mean columns (at the defaults on the
    whole sets; with ``--tuned`` the tuned table of the validation split's run), the first in each column and every
    method tied with it in bold, the order with its margins below (results/every_method.md and .csv)."""
    rows, text = [], []
    for label, ind, model in _runs(args):
        results = find_results(args, model, ind)
        names = (TUNED_OVERVIEW_CSV, TUNED_BOOTSTRAP) if args.tuned else (OVERVIEW_CSV, BOOTSTRAP)
        if results is None or not (results / names[0]).exists():
            log.info(f"{label}: no {names[0]} under {args.runs_root}")
            continue
        near = (read_json(results / RUN_RECORD) or {}).get("near", [])
        table = read_csv(results / names[0])
        sets = [c for c in table[0] if c not in ("method", "near", "far", "mean")]
        sets = sorted(sets, key=lambda x: (x not in near, x))
        margins = column_order(Draws.load(results / names[1]), near) if (results / names[1]).exists() else []
        lead = leaders(margins)
        cells = []
        for r in table:
            row = {"model": label, "method": r["method"], **{c: _f(r[c]) for c in (*sets, "near", "far", "mean")}}
            rows.append(row)
            cells.append({"method": r["method"], **{c: (f"**{row[c]:.2f}**" if r["method"] in lead.get(c, ())
                                                        else f"{row[c]:.2f}") for c in (*sets, "near", "far", "mean")}})
        text += [f"### {label}", "", f"{'Tuned' if args.tuned else 'At the defaults'}, AUROC (`{results}`); bold: the "
                 "first in a column and every method tied with it (the 95% interval of its margin holds 0):", "",
                 format_table(cells)]
        if margins:
            text += ["", order_text(margins)]
        else:
            log.info(f"{label}: no {names[1]} in {results}; rerun detect_oods.py for the intervals")
    if not rows:
        raise FileNotFoundError(f"no results to collect under {args.runs_root}")
    return publish(args, "every_method", rows, "\n".join(text))


def near_far_grid(rows, which: str, lead=None) -> str:
    """Markdown: a row per method, a column per backbone, "near / far" AUROC of the ``which`` table. Bold: in each
    backbone's near and far, the first and every method tied with it (``lead``: ``(model, which, column)`` ->
    methods, from the bootstrap); the largest value alone where a backbone has no bootstrap."""
    lead = lead or {}
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["model"], r["method"]): r for r in rows}
    def column_best(m, k):      # NaN where the backbone's run has no set of that kind
        values = [v for x in methods if (m, x) in cell and not np.isnan(v := cell[m, x][f"{k} ({which})"])]
        return max(values, default=float("nan"))
    best = {(m, k): column_best(m, k) for m in models for k in ("near", "far")}

    def fmt(m, x, k):
        v = cell[m, x][f"{k} ({which})"]
        bold = x in lead[m, which, k] if (m, which, k) in lead else v == best[m, k]
        return f"**{v:.2f}**" if bold else f"{v:.2f}"
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for x in methods:
        lines.append(f"| {x} | " + " | ".join(f"{fmt(m, x, 'near')} / {fmt(m, x, 'far')}" if (m, x) in cell else ""
                                               for m in models) + " |")
    return "\n".join(lines) + "\n"


def main(args):
    if args.every_method:
        return every_method_tables(args)
    if args.tuned:
        return tuned_tables(args)
    per_ind, lines = {ind: {} for ind in args.ind}, []
    for label, ind, model in _runs(args):
        results = find_results(args, model, ind)
        if results is None:
            log.info(f"{label}: no results {args.data_tag}/results/{args.detector_tag} under {args.runs_root}; "
                     f"run run_pipeline.py --model {model} --ind {ind} --calibration-size 5000 first")
            continue
        record = read_json(results / RUN_RECORD) or {}
        test = load_features(Path(record.get("features", results.parent.parent)), "test")
        acc = 100 * float((np.asarray(test["logits"]).argmax(1) == test["labels"]).mean())
        norm = (record.get("normalization") or {}).get("name", "imagenet")
        lines.append(f"- {model}: {acc:.2f}% test accuracy on {len(test['labels'])} {ind} test images "
                     f"({norm} normalisation); results {results}")
        variants = {n: v.split(" ")[0] for n, v in record.get("variants", {}).items()}
        per_ind[ind][model] = (read_csv(results / SUMMARY_CSV), variants)
    if not any(per_ind.values()):
        raise FileNotFoundError(f"no results to collect under {args.runs_root}")
    if len(args.ind) == 1:
        rows = [{("model" if k == "model" else "OOD set" if k == "ood" else COLUMNS[k]): v for k, v in r.items()}
                for r in paper_table(per_ind[args.ind[0]])]
    else:
        rows = side_by_side({ind: paper_table(runs) for ind, runs in per_ind.items() if runs})
    return publish(args, "paper_table", rows, "\n".join(lines) + "\n\n" + format_table(rows))


def side_by_side(tables) -> list:
    """The paper's two columns: a row per backbone and OOD set, LA-OOD's AUROC and FPR95 (ID positive) and LA-OOD
    tail + Energy's AUROC on each in-distribution set; the other CIFAR set of each is one row ("other CIFAR")."""
    rows = {}
    for ind, table in tables.items():
        for r in table:
            name = r["ood"].split(" ")[0]
            key = (r["model"], "other CIFAR" if name in IND_SETS else r["ood"])
            row = rows.setdefault(key, {"model": key[0], "OOD set": key[1]})
            row.update({f"{ind}: LA-OOD AUROC": r["auroc"], f"{ind}: LA-OOD FPR95": r["fpr95_ind"],
                        f"{ind}: tail + Energy AUROC": r["tail_energy_auroc"]})
    return list(rows.values())


if __name__ == "__main__":
    run_script(main, get_args_parser)
