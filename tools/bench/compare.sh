#!/usr/bin/env bash
# Forward throughput, whisker vs PyTorch vs ONNX Runtime, same machine, same run (see
# tools/bench/compare.py for the options). Installs the Python side in a venv outside the
# repository on first use (tools/bench/setup.sh; PYTHON=... to use another).
#   tools/bench/compare.sh [--threads 2,1] [--batch 16,1] [--burn] [MODEL...]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tools/bench/compare.py "$@"
