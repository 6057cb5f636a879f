"""How the main job walks the code: the repository modules a small ``run_pipeline.py`` run enters, counted as
distinct calls from a function of one module into a function of another (a call site exercised, however often it
runs), and as entries at run time. Run it on two checkouts to compare layouts.

    python -m benchmarks.module_visits --source-root ../shared/data --runs-root /tmp/visits
"""
import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    parser = argparse.ArgumentParser("module visits of a small run_pipeline.py run", add_help=True)
    parser.add_argument("--source-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", type=Path, default=Path("../shared/checkpoints/resnet20-cifar10-akamaster.th"))
    parser.add_argument("--runs-root", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--top", type=int, default=12, help="modules listed")
    return parser


def module_of(filename: str):
    path = Path(filename)
    if not path.is_absolute() or ROOT not in path.parents or "benchmarks" in path.parts or "tests" in path.parts:
        return None
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def main(args):
    import run_pipeline
    root = args.runs_root or Path(tempfile.mkdtemp())
    argv = ["--checkpoint", str(args.checkpoint), "--model", "resnet20", "--source-root", str(args.source_root),
            "--data-root", str(root / "gen"), "--runs-root", str(root / "runs"), "--max-train", "300",
            "--max-test", "100", "--max-ood", "100", "--ood", "dtd", "pure_color", "--calibration-size", "50",
            "--gammas", "0.01", "0.1", "--n-jobs" if "--n-jobs" in run_pipeline.get_args_parser().format_help()
            else "--jobs", "1", "--device", "cpu"]
    parsed = run_pipeline.get_args_parser().parse_args(argv)
    entries, edges, stack = [], set(), [(None, None)]

    def profile(frame, event, _arg):
        if event == "call":
            mod = module_of(frame.f_code.co_filename)
            if mod is not None and mod != stack[-1][0]:
                entries.append(mod)
                edges.add((stack[-1], (mod, frame.f_code.co_name)))
            stack.append((mod, frame.f_code.co_name) if mod is not None else stack[-1])
        elif event == "return" and len(stack) > 1:
            stack.pop()
    sys.setprofile(profile)
    try:
        run_pipeline.main(parsed)
    finally:
        sys.setprofile(None)
    visits = Counter(entries)
    paths = Counter(callee[0] for _, callee in edges)        # distinct call sites into each module
    print(f"\n{len(visits)} modules entered; {len(edges)} distinct calls from one module into another "
          f"({len(edges) - len(paths)} into a module already entered by another); {len(entries)} entries at run time")
    print("distinct calls into a module (the most entered):")
    for mod, n in paths.most_common(args.top):
        print(f"  {mod}: {n} ({visits[mod]} at run time)")
    return paths


if __name__ == "__main__":
    main(get_args_parser().parse_args())
