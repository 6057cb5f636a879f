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


def test_every_detector_setting_has_its_flag_and_the_flags_make_the_detectors():
    import argparse

    from utils.cli import add_data_args, add_detector_args
    from utils.detectors import LAOOD
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    add_detector_args(parser)
    dests = {a.dest for a in parser._actions}
    assert set(LAOOD().get_params()) - dests == {"backend"}         # --seed is the data flag; backend follows Dask
    args = parser.parse_args(["--detector", "ocsvm-approx", "--landmarks", "64", "--no-prune", "--jobs", "2",
                              "--nu", "0.01", "--seed", "3", "--calibration-size", "50"])
    la = LAOOD.from_flags(args)
    assert la.get_params() == {**LAOOD().get_params(), "detector": "ocsvm-approx", "n_components": 64, "prune": False,
                               "n_jobs": 2, "nu": 0.01, "seed": 3, "calibration_size": 50}
    assert LAOOD.from_flags(parser.parse_args([])).get_params() == {**LAOOD().get_params(), "n_jobs": -1}
    auto = LAOOD(detector="auto")
    assert auto.resolved(10).detector == "ocsvm" and "auto" in auto.resolved(10).choice
    assert auto.resolved(10**7).detector == "ocsvm-approx"
