#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and no internet: whisker's CUDA build (from
# tools/gpu-payload.sh) against the CPU and against PyTorch.
#
#   tools/gpu-check.sh [PAYLOAD] [OUT]     # PAYLOAD: default .gpu; OUT: default gpu-check
#
# 1. parity: the 1000 logits of real EfficientNet-Lite0 weights on three photos, GPU vs the
#    CPU's (|Δ| ≤ 1e-3; `--precision tf32`, `bf16` and `f16`'s shown too); with WGPU=wgpu (a
#    build with both features), the same through Vulkan; without a seeded cache (below), the
#    same classify first with an empty one: autotune's first-run cost;
# 2. a 3-step fine-tune (digits, every layer trainable, one step an epoch): the losses, GPU vs
#    the CPU's (relative ≤ 1e-3); with --precision bf16 too (shown: mixed precision's effect);
# 3. throughput (`whisker bench`, each of PRECISIONS, default fp32 tf32 bf16): eval forward at
#    batch 64 and 256, a training step at batch 64, for resnet50, mobilenet_v2 and
#    efficientnet_lite0; and, when python3 has PyTorch with CUDA, the same in PyTorch
#    (tools/bench/gpu_torch.py: fp32, its default, autocast bf16 / f16) in the same run;
# 4. Grad-CAM's map vs the CPU's; a PGD attack, an ideal-class image and feature maps run.
# Each step has a time limit, and the whole check stops after BUDGET seconds (default 900).
# Writes OUT/gpu-check.json and OUT/gpu-check.md (the table); exits 1 when a parity check fails.
# The GPU runtime's cache (autotune choices, compiled kernels) starts from PAYLOAD/cubecl-cache.tar.gz
# when the payload carries one (a previous run's on the same kind of GPU: `GPU_CACHE=…
# tools/gpu-payload.sh`), else empty, and is written to OUT/cubecl-cache.tar.gz for the next run:
# autotune's first run costs minutes.
# Needs python3 (the comparisons), xz; nvidia-smi for the GPU's name. Kernels that use
# exp/log/tanh need CUDA's libdevice: found under CUDA_PATH, /usr/local/cuda or the PyPI wheel
# nvidia-cuda-nvcc (set CUDA_PATH to its nvidia/cuda_nvcc folder).
set -uo pipefail
cd "$(dirname "$0")/.."
P=${1:-.gpu}
OUT=${2:-gpu-check}
MIN_SECONDS=${MIN_SECONDS:-2}
MODELS=${MODELS:-resnet50 mobilenet_v2 efficientnet_lite0}
BATCHES=${BATCHES:-64,256}
TRAIN_BATCHES=${TRAIN_BATCHES:-64}
# DEVICE=cpu is a dry run of the script itself on any machine
DEVICE=${DEVICE:-cuda}
PRECISIONS=${PRECISIONS:-fp32 tf32 bf16}
BUDGET=${BUDGET:-900}
DEADLINE=$(($(date +%s) + BUDGET))
mkdir -p "$OUT"
say() { echo "gpu-check: $*" >&2; }
# stage NAME SECONDS CMD...: runs CMD with a time limit, stdout to OUT/NAME.json, stderr to
# OUT/NAME.err (and the terminal), exit status and milliseconds to OUT/NAME.rc
# (at most until the whole check's deadline, BUDGET seconds after the start)
stage() {
  local name=$1 limit=$2 t0 rc left
  shift 2
  left=$((DEADLINE - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then say "$name skipped: out of time (BUDGET=$BUDGET s)"; return; fi
  # no feature cached by an earlier stage (another device or precision) may stand in for
  # this one's
  rm -rf "$WHISKER_HOME/features"
  t0=$(date +%s%N)
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  rc=$?
  echo "{\"rc\": $rc, \"ms\": $((($(date +%s%N) - t0) / 1000000))}" >"$OUT/$name.rc"
  cat "$OUT/$name.err" >&2
  [ "$rc" = 0 ] || say "$name failed (exit $rc)"
}
[ -f "$P/whisker.xz" ] || { say "$P/whisker.xz missing: run tools/gpu-payload.sh where the build works"; exit 2; }
command -v python3 >/dev/null || { say "python3 is needed"; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
xz -dc "$P/whisker.xz" >"$tmp/whisker" && chmod +x "$tmp/whisker" || { say "cannot unpack $P/whisker.xz"; exit 2; }
W=$tmp/whisker
export WHISKER_HOME=$tmp/home
export XDG_CACHE_HOME=$tmp/cache
mkdir -p "$XDG_CACHE_HOME"
seeded=
if [ -f "$P/cubecl-cache.tar.gz" ]; then
  tar -xzf "$P/cubecl-cache.tar.gz" -C "$XDG_CACHE_HOME" && seeded=1 &&
    say "GPU runtime cache seeded from $P/cubecl-cache.tar.gz"
fi

if [ -z "${CUDA_PATH:-}" ]; then
  for d in /usr/local/cuda /usr/lib/cuda \
    "$(python3 -c 'import nvidia.cuda_nvcc as m; print(m.__path__[0])' 2>/dev/null)"; do
    if [ -n "$d" ] && [ -f "$d/nvvm/libdevice/libdevice.10.bc" ]; then export CUDA_PATH=$d; break; fi
  done
fi
{
  echo "{"
  echo "\"gpu\": \"$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)\","
  echo "\"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc),"
  echo "\"cuda_path\": \"${CUDA_PATH:-}\", \"commit\": \"$(cat "$P/commit" 2>/dev/null)\""
  echo "}"
} >"$OUT/machine.json"
cat "$OUT/machine.json" >&2

"$W" -q weights fetch efficientnet_lite0 --from "$P/efficientnet-lite0.pth" >/dev/null || exit 2

say "1/5 logits parity (classify, real Lite0 weights)"
# autotune's cost: a first run with an empty cache (unless seeded), then the same with the
# choices on disk (the parity check's run)
if [ -z "$seeded" ]; then
  stage classify-cold 300 "$W" -q --device "$DEVICE" classify "$P/photos" -k 1000 --json
fi
stage classify-gpu 300 "$W" -q --device "$DEVICE" classify "$P/photos" -k 1000 --json

say "2/5 fine-tune 3 steps"
"$W" -q data digits "$tmp/digits" --from "$P/digits.csv.gz" --limit 40 >/dev/null
stage train-gpu 420 "$W" -q --device "$DEVICE" train "$tmp/digits" --out "$tmp/run" --mode finetune \
  --unfreeze all --freeze-epochs 0 --epochs 3 --no-augment --batch-size 32 --json
stage train-bf16 300 "$W" -q --device "$DEVICE" --precision bf16 train "$tmp/digits" --out "$tmp/run-bf16" \
  --mode finetune --unfreeze all --freeze-epochs 0 --epochs 3 --no-augment --batch-size 32 --json

if python3 -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null; then
  say "3/5 PyTorch"
  # shellcheck disable=SC2086
  modes=$(echo "$PRECISIONS" | sed 's/tf32/default/' | tr ' ' ,)
  stage bench-torch "${TORCH_TIMEOUT:-300}" python3 tools/bench/gpu_torch.py --batch "$BATCHES" \
    --train-batch "$TRAIN_BATCHES" --min-seconds "$MIN_SECONDS" --modes "$modes" $MODELS
else
  say "3/5 PyTorch with CUDA not importable: no PyTorch numbers"
fi

say "4/5 whisker bench"
for m in $MODELS; do
  for prec in $PRECISIONS; do
    stage "bench-whisker-$m-$prec" "${BENCH_TIMEOUT:-150}" "$W" -q --device "$DEVICE" --precision "$prec" \
      bench "$m" --batch "$BATCHES" --train-batch "$TRAIN_BATCHES" --min-seconds "$MIN_SECONDS" \
      --warmup 3 --jsonl
  done
done

for prec in tf32 bf16 f16; do
  stage "classify-$prec" 200 "$W" -q --device "$DEVICE" --precision "$prec" classify "$P/photos" -k 1000 --json
done

if [ -n "${WGPU:-}" ]; then
  say "the wgpu build's logits (Vulkan), WGPU=$WGPU"
  stage classify-wgpu 200 "$W" -q --device "$WGPU" classify "$P/photos" -k 1000 --json
fi

say "5/5 inspecting: Grad-CAM, a PGD attack, an ideal-class image, feature maps"
stage cam-gpu 200 "$W" -q --device "$DEVICE" cam "$P/photos/chelsea.png" --out "$tmp/cam" --json
stage attack-gpu 200 "$W" -q --device "$DEVICE" attack "$P/photos/coffee.png" --target "tiger cat" \
  --method pgd --steps 10 --eps 4/255 --out "$tmp/adv.png" --json
stage dream-gpu 200 "$W" -q --device "$DEVICE" dream --class "tiger cat" --steps 20 --out "$tmp/dream.png" --json
stage featuremap-gpu 200 "$W" -q --device "$DEVICE" featuremap "$P/photos/chelsea.png" --out "$tmp/fm.png"

[ -d "$XDG_CACHE_HOME/cubecl" ] && tar -czf "$OUT/cubecl-cache.tar.gz" -C "$XDG_CACHE_HOME" cubecl
python3 tools/bench/gpu_summary.py "$P" "$OUT"
