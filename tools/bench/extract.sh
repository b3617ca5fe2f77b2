#!/usr/bin/env bash
# Feature extraction (decode + preprocess + forward) images/s and probe fit time, whisker vs
# PyTorch + torchvision (DataLoader with 2 workers), same photos, same machine, same run.
#   tools/bench/extract.sh [THREADS] [IMAGES]
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"; IMAGES="${2:-96}"
PYTHON="${PYTHON:-python3}"
tools/fetch-testdata.sh >/dev/null
out=$(mktemp -d)
cargo run --release -q --example bench_extract -- --threads "$THREADS" --images "$IMAGES" > "$out/w.jsonl"
if "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  "$PYTHON" tools/bench/bench_extract_torch.py --threads "$THREADS" --images "$IMAGES" > "$out/t.jsonl"
else
  : > "$out/t.jsonl"
fi
python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
w = [json.loads(l) for l in open(os.path.join(d, "w.jsonl"))]
t = {r["model"]: r for r in map(json.loads, open(os.path.join(d, "t.jsonl")))}
print("| backbone | whisker img/s | PyTorch + DataLoader(2 workers) img/s | ratio |")
print("|---|---:|---:|---:|")
for r in w:
    if r["bench"] != "extract":
        continue
    p = t.get(r["model"])
    print(f"| {r['model']} | {r['images_per_s']:.1f} | {p['images_per_s'] if p else '-'} | {r['images_per_s'] / p['images_per_s']:.2f}× |" if p else f"| {r['model']} | {r['images_per_s']:.1f} | - | - |")
for r in w:
    if r["bench"] == "probe_fit":
        print(f"\nprobe fit, {r['n']} × {r['dim']} features, {r['classes']} classes, {r['l2_values']} L2 values "
              f"(10 % validation, then refit): {r['seconds']:.2f} s, {r['lbfgs_iterations']} L-BFGS iterations")
PY
