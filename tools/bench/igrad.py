#!/usr/bin/env python3
"""Input-gradient speed, whisker (CPU engine, and with --burn burn's autodiff) against
PyTorch, same machine, same run, alternating sides per round. Prints a Markdown table per
batch size (best of --rounds, ms per step; ratio = PyTorch time / whisker time).

    tools/bench/igrad.py [--threads 2] [--batch 1,16] [--rounds 2] [--burn] [MODEL...]

PYTHON: the interpreter with torch and torchvision (default: tools/bench/setup.sh's venv).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from compare import cpu, run  # noqa: E402

DEFAULT = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_lite0"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--burn", action="store_true", help="also burn's autodiff")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    python = os.environ.get("PYTHON") or subprocess.run(
        [os.path.join(ROOT, "tools", "bench", "setup.sh")], capture_output=True, text=True,
        check=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "whisker", "--example", "bench_igrad"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "release", "examples", "bench_igrad")
    sides = ["whisker"] + (["burn"] if a.burn else []) + ["torch"]
    model, flags = cpu()
    for batch in [int(b) for b in a.batch.split(",")]:
        best = {}
        for m in a.models or DEFAULT:
            for r in range(a.rounds):
                for side in (sides if r % 2 == 0 else list(reversed(sides))):
                    common = ["--threads", str(a.threads), "--batch", str(batch),
                              "--min-seconds", str(a.min_seconds)]
                    if side == "torch":
                        cmd = [python, os.path.join(ROOT, "tools", "bench", "bench_igrad_torch.py")] + common + [m]
                    else:
                        cmd = [exe] + common + ["--engine", "burn" if side == "burn" else "auto", m]
                    res = run(cmd)
                    key = (m, side)
                    if key not in best or res["ms_per_step"] < best[key]["ms_per_step"]:
                        best[key] = res
                print(f"  {m} b{batch} round {r}: " + ", ".join(
                    f"{s} {best[(m, s)]['ms_per_step']} ms" for s in sides), file=sys.stderr)
        t0 = next(v for (mm, s), v in best.items() if s == "torch")
        print(f"\n### Input gradient d(logit)/d(pixels), frozen weights, batch {batch}, {a.threads} thread(s)\n")
        print(f"CPU: {model}; flags: {' '.join(flags)}; PyTorch {t0['torch']} (CPU capability {t0['isa']}). "
              f"Best of {a.rounds} alternated runs, ms per step.\n")
        head = "| backbone | size | whisker |" + (" whisker (burn) |" if a.burn else "") + " PyTorch | whisker speed / PyTorch |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for m in a.models or DEFAULT:
            w, t = best[(m, "whisker")], best[(m, "torch")]
            row = f"| {m} | {w['size']} | {w['ms_per_step']:.1f} |"
            if a.burn:
                row += f" {best[(m, 'burn')]['ms_per_step']:.1f} |"
            row += f" {t['ms_per_step']:.1f} | {t['ms_per_step'] / w['ms_per_step']:.2f}× |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
