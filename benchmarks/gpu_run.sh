#!/usr/bin/env bash
# The GPU path in one prepared run (see benchmarks/gpu_run.py): on a CUDA machine,
#     OUT=/path/to/out bash benchmarks/gpu_run.sh
# and, to check it on the CPU at a tiny size first (the test suite does),
#     bash benchmarks/gpu_run.sh --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu_run "$@"
