#!/usr/bin/env bash
# The Python side of the benchmarks (PyTorch, torchvision, timm, safetensors, ONNX, ONNX Runtime,
# OpenVINO),
# in a virtual environment outside the repository. Prints the python to use:
#   PYTHON=$(tools/bench/setup.sh)
set -euo pipefail
VENV="${WHISKER_BENCH_VENV:-$HOME/.cache/whisker-bench-venv}"
if ! "$VENV/bin/python" -c "import torch, torchvision, timm, safetensors, onnx, onnxruntime, openvino" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q torch torchvision timm safetensors onnx onnxruntime openvino >&2
fi
echo "$VENV/bin/python"
