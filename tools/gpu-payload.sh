#!/usr/bin/env bash
# Packs what tools/gpu-check.sh needs on a machine with an NVIDIA GPU and no internet:
# whisker built with CUDA (stripped, xz), the real EfficientNet-Lite0 weights, test photos, the
# digits, and the CPU's results on them (the references the GPU must match).
#
#   tools/setup-gpu.sh          # once per machine (the CUDA build needs LLVM)
#   tools/gpu-payload.sh [DIR]  # DIR: default .gpu (about 50 MB)
#   # carry DIR and tools/ to the GPU machine, then there:
#   tools/gpu-check.sh [DIR] [OUT]
#
# WHISKER_GPU_FEATURES (default: cuda) picks the build's features, e.g. `cuda,wgpu`; empty: a
# CPU build, for a dry run of the scripts (`DEVICE=cpu tools/gpu-check.sh`). GPU_CACHE: a
# previous gpu-check's OUT/cubecl-cache.tar.gz (same kind of GPU), carried so that the check
# starts with autotune's choices and compiled kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu}
features=${WHISKER_GPU_FEATURES-cuda}
target=${CARGO_TARGET_DIR:-$PWD/target}
export WHISKER_TESTDATA="${WHISKER_TESTDATA:-$PWD/.testdata}"
tools/fetch-testdata.sh >/dev/null
td=$WHISKER_TESTDATA

echo "gpu-payload: building whisker with --features $features" >&2
cargo build --release -q -p whisker-cli --features "$features"
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
strip -o "$tmp/whisker" "$target/release/whisker"
xz -T0 -9 -c "$tmp/whisker" >"$DIR/whisker.xz.part" && mv "$DIR/whisker.xz.part" "$DIR/whisker.xz"
cp "$td/efficientnet-lite0-57934424.pth" "$DIR/efficientnet-lite0.pth"
mkdir -p "$DIR/photos"
cp "$td/chelsea.png" "$td/coffee.png" "$td/rocket.jpg" "$DIR/photos/"
cp "$td/digits.csv.gz" "$DIR/"
if [ -n "${GPU_CACHE:-}" ]; then cp "$GPU_CACHE" "$DIR/cubecl-cache.tar.gz"; fi

# the CPU references, computed by the same binary
W=$tmp/whisker
export WHISKER_HOME=$tmp/home
"$W" -q weights fetch efficientnet_lite0 --from "$DIR/efficientnet-lite0.pth" >/dev/null
"$W" -q --device cpu classify "$DIR/photos" -k 1000 --json >"$DIR/ref-classify.json"
"$W" -q --device cpu cam "$DIR/photos/chelsea.png" --out "$tmp/cam" --json >"$DIR/ref-cam.json"
"$W" -q --device cpu attack "$DIR/photos/coffee.png" --target "tiger cat" --method pgd --steps 10 \
  --eps 4/255 --out "$tmp/adv.png" --json >"$DIR/ref-attack.json"
"$W" -q data digits "$tmp/digits" --from "$DIR/digits.csv.gz" --limit 40 >/dev/null
"$W" -q --device cpu train "$tmp/digits" --out "$tmp/run" --mode finetune --unfreeze all \
  --freeze-epochs 0 --epochs 3 --no-augment --batch-size 32 --json >"$DIR/ref-train.json"
git rev-parse HEAD >"$DIR/commit" 2>/dev/null || true
echo "$features" >"$DIR/features"
du -sh "$DIR" >&2
