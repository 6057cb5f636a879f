"""The paper-style table: LA-OOD on each backbone and OOD set, with Energy and LA-OOD tail + Energy beside it.

    python collect_results.py --models vgg16 resnet34 densenet100

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
from utils.paths import RUN_RECORD, SUMMARY_CSV, Layout
from utils.tables import paper_table

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
    return parser


def find_results(args, model: str):
    chosen = dict(spec.split("=", 1) for spec in args.run)
    if model in chosen:
        return Path(chosen[model])
    runs = Layout(runs_root=args.runs_root).runs_of(args.ind, model, args.data_tag)    # float32 runs only
    found = [r for r in (Layout.results(run, args.detector_tag) for run in runs) if (r / SUMMARY_CSV).exists()]
    return max(found, key=lambda r: (r / SUMMARY_CSV).stat().st_mtime) if found else None


def read_summary(path: Path):
    with open(path) as f:
        return [{k: (float(v) if k not in ("ood", "method", "n") and v not in ("", None) else v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def main(args):
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
