"""The commands the README and docs/ show parse with the scripts' own parsers, as written."""
import importlib
import re
import shlex

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)


def commands():
    """``(page, command line)`` of every ``python SCRIPT.py ...`` / ``python -m benchmarks.NAME ...`` line in a
    fenced block, continuation lines joined."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            variables = {}
            for line in block.replace("\\\n", " ").splitlines():
                assignment = re.fullmatch(r"\s*(\w+)=(.*)", line)
                if assignment:                    # NAME="--flag value": a shorthand the block's commands use
                    variables[assignment[1]] = " ".join(shlex.split(assignment[2], comments=True))
                    continue
                line = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m[1], m[0]), line)
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:          # prose in a block, not a command
                    continue
                while words and ("=" in words[0] and not words[0].startswith("-")):   # VAR=value prefixes
                    words = words[1:]
                if words[:1] in (["python"], ["torchrun"]):
                    found.append((page.name, words))
    return found


def _module_and_args(words):
    args = [w for w in words[1:]]
    while args and args[0].startswith("--") and not args[0].endswith(".py"):   # torchrun's own flags
        args = args[2:] if "=" not in args[0] else args[1:]
    if args[:1] == ["-m"]:
        return args[1], args[2:]
    if args and args[0].endswith(".py"):
        return args[0][:-3].replace("/", "."), args[1:]
    return None, args


def _parsers():
    """The documented commands whose script has a ``get_args_parser()``: every stage script does."""
    cases = []
    for page, words in commands():
        name, args = _module_and_args(words)
        if name is not None and (ROOT / (name.replace(".", "/") + ".py")).exists():
            cases.append(pytest.param(name, args, id=f"{page}: {' '.join(words[1:4])}"))
    return cases


@pytest.mark.parametrize("name,args", _parsers())
def test_every_documented_command_parses(name, args):
    module = importlib.import_module(name)
    if not hasattr(module, "get_args_parser"):
        pytest.skip(f"{name} builds its parser inside main()")
    try:
        module.get_args_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"`{name} {' '.join(args)}` does not parse (exit {e.code})")


def test_the_documented_commands_were_found():
    names = {p.values[0] for p in _parsers()}
    assert {"run_pipeline", "generate_datasets", "save_inter_outputs", "train_ood_detectors", "detect_oods",
            "co_train", "train_backbone_model", "collect_results"} <= names


def test_the_readme_is_a_guide():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
