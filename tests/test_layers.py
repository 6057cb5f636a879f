"""The import layers stay layers: import-linter checks the contracts in .importlinter (scripts and benchmarks on
top, the stages, the shared pieces, ``io`` and ``paths``, then the models; no import back up, no circle)."""
import ast
import shutil
import subprocess

import pytest

from conftest import ROOT

SCRIPTS = sorted(p for p in ROOT.glob("*.py"))


def test_import_contracts_are_kept():
    linter = shutil.which("lint-imports")
    assert linter, "import-linter is in requirements.txt: pip install -r requirements.txt"
    done = subprocess.run([linter, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_the_library_not_each_other(script):
    """Stage scripts wire the library together; only run_pipeline.py calls the stage scripts it runs."""
    names = {p.stem for p in SCRIPTS}
    imported = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    others = imported & names - {script.stem}
    assert not others or script.stem == "run_pipeline", f"{script.name} imports the scripts {sorted(others)}"
    assert "benchmarks" not in imported and "tests" not in imported
