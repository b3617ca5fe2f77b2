#!/usr/bin/env python3
"""Fine-tuning step speed, whisker against PyTorch, same machine, same run, alternating sides
per round. Prints a Markdown table per setting (best of --rounds; images/s; ratio = whisker /
PyTorch).

    tools/bench/train.py [--threads 2] [--batch 16] [--bn eval,train] [--optim sgd]
        [--unfreeze all] [--rounds 2] [MODEL...]

PYTHON: the interpreter with torch and torchvision (default: tools/bench/setup.sh's venv).
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from compare import cpu, run  # noqa: E402

DEFAULT = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_lite0"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bn", default="eval,train")
    ap.add_argument("--optim", default="sgd")
    ap.add_argument("--unfreeze", default="all")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    python = os.environ.get("PYTHON") or subprocess.run(
        [os.path.join(ROOT, "tools", "bench", "setup.sh")], capture_output=True, text=True,
        check=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "whisker", "--example", "bench_train"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "release", "examples", "bench_train")
    model, flags = cpu()
    keys = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    for bn in a.bn.split(","):
        best = {}
        for m in a.models or DEFAULT:
            common = ["--threads", str(a.threads), "--batch", str(a.batch), "--bn", bn,
                      "--optim", a.optim, "--unfreeze", a.unfreeze, "--min-seconds", str(a.min_seconds)]
            # round 0 runs whisker first: it writes the trainable keys the twin reads
            for r in range(a.rounds):
                for side in (["whisker", "torch"] if r % 2 == 0 else ["torch", "whisker"]):
                    if side == "torch":
                        cmd = [python, os.path.join(ROOT, "tools", "bench", "bench_train_torch.py")] + common + ["--keys", keys, m]
                    else:
                        cmd = [exe] + common + ["--keys", keys, m]
                    res = run(cmd)
                    if (m, side) not in best or res["images_per_s"] > best[(m, side)]["images_per_s"]:
                        best[(m, side)] = res
                print(f"  {m} bn={bn} round {r}: whisker {best[(m, 'whisker')]['images_per_s']} img/s, "
                      f"torch {best[(m, 'torch')]['images_per_s']} img/s", file=sys.stderr)
        t0 = next(v for (mm, s), v in best.items() if s == "torch")
        print(f"\n### Fine-tuning step, batch {a.batch}, BatchNorm {bn}, {a.optim}, unfreeze {a.unfreeze}, {a.threads} thread(s)\n")
        print(f"CPU: {model}; flags: {' '.join(flags)}; PyTorch {t0['torch']} (CPU capability {t0['isa']}). "
              f"Best of {a.rounds} alternated runs; forward, cross-entropy, backward, optimiser step.\n")
        print("| backbone | size | trainable tensors | whisker img/s | PyTorch img/s | whisker / PyTorch |")
        print("|---|---|---:|---:|---:|---:|")
        for m in a.models or DEFAULT:
            w, t = best[(m, "whisker")], best[(m, "torch")]
            print(f"| {m} | {w['size']} | {w['trainable_tensors']} | {w['images_per_s']:.2f} | "
                  f"{t['images_per_s']:.2f} | {w['images_per_s'] / t['images_per_s']:.2f}× |", flush=True)
    os.unlink(keys)


if __name__ == "__main__":
    main()
