#!/usr/bin/env bash
# `whisker dream` (300 steps) and a 10-step PGD `whisker attack` against the same loops in
# PyTorch (tools/bench/inspect_torch.py), alternately, EfficientNet-Lite0 with its real
# weights, 2 threads. whisker: the whole command's wall time (start-up and model loading
# included); PyTorch: its loop only.
#
#   PYTHON=<venv>/bin/python tools/bench/inspect.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
PYTHON=${PYTHON:-$(tools/bench/setup.sh)}
export WHISKER_TESTDATA="${WHISKER_TESTDATA:-$PWD/.testdata}"
T=$WHISKER_TESTDATA
cargo build --release -q -p whisker-cli
W="${CARGO_TARGET_DIR:-$PWD/target}/release/whisker"
HOME_DIR=$(mktemp -d)
trap 'rm -rf "$HOME_DIR"' EXIT
export WHISKER_HOME=$HOME_DIR
"$W" -q weights fetch efficientnet_lite0 --from "$T/efficientnet-lite0-57934424.pth" >/dev/null
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512_vnni|avx512_bf16|amx_tile)$' | xargs)"
for r in $(seq "$ROUNDS"); do
  wd=$(secs "$W" --threads 2 -q dream --class tabby --out "$HOME_DIR/d.png")
  td=$("$PYTHON" tools/bench/inspect_torch.py dream --weights "$T/efficientnet-lite0-57934424.pth")
  ta=$("$PYTHON" tools/bench/inspect_torch.py attack --weights "$T/efficientnet-lite0-57934424.pth" --image "$T/chelsea.png")
  wa=$(secs "$W" --threads 2 -q attack "$T/chelsea.png" --target zebra --steps 10 --out "$HOME_DIR/a.png")
  echo "round $r: dream 300 steps: whisker ${wd} s, PyTorch $(echo "$td" | sed 's/.*"seconds": \([0-9.]*\).*/\1/') s; attack 10 steps: whisker ${wa} s, PyTorch $(echo "$ta" | sed 's/.*"seconds": \([0-9.]*\).*/\1/') s"
done
