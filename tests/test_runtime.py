"""What a stage script prints: this repository's progress lines and anyone's warnings, not other libraries' INFO."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import logging
from utils.runtime import run_script

def main(args):
    logging.getLogger("utils.features").info("own progress")
    logging.getLogger("generate_datasets").info("script progress")
    logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
    logging.getLogger("faiss.loader").warning("a real warning")
    raise ValueError("bad input, said once")

run_script(main, lambda: __import__("argparse").ArgumentParser())
"""


def test_scripts_show_own_progress_and_warnings_but_not_third_party_info():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines == ["own progress", "script progress", "a real warning", "error: bad input, said once"]
