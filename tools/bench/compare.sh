#!/usr/bin/env bash
# Forward throughput, whisker vs PyTorch, same machine, same run, same thread count.
#   tools/bench/compare.sh [THREADS] [MODEL...]
# Needs PyTorch + torchvision for the comparison (PYTHON=/path/to/venv/bin/python); without
# them only whisker's numbers are printed. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"; shift || true
PYTHON="${PYTHON:-python3}"
out=$(mktemp -d)
cargo run --release -q --example bench_forward -- --threads "$THREADS" "$@" > "$out/whisker.jsonl"
if "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  "$PYTHON" tools/bench/bench_torch.py --threads "$THREADS" "$@" > "$out/torch.jsonl"
else
  echo "(PyTorch not found with $PYTHON: whisker only)" >&2
  : > "$out/torch.jsonl"
fi
python3 - "$out" "$THREADS" <<'PY'
import json, platform, sys, os
d, threads = sys.argv[1], sys.argv[2]
w = [json.loads(l) for l in open(os.path.join(d, "whisker.jsonl"))]
t = {r["model"]: r for r in map(json.loads, open(os.path.join(d, "torch.jsonl")))}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
tv = next(iter(t.values()), {}).get("torch", "-")
print(f"Eval forward, batch {w[0]['batch']}, 224×224, {threads} threads, {cpu}, PyTorch {tv}\n")
print("| backbone | whisker img/s | PyTorch img/s | ratio (whisker / PyTorch) |")
print("|---|---:|---:|---:|")
for r in w:
    p = t.get(r["model"])
    ratio = f"{r['images_per_s'] / p['images_per_s']:.2f}×" if p else "-"
    print(f"| {r['model']} | {r['images_per_s']:.1f} | {p['images_per_s'] if p else '-'} | {ratio} |")
PY
