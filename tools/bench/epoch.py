#!/usr/bin/env python3
"""One fine-tuning epoch end to end, whisker against PyTorch, alternating sides per round:
`whisker train DIGITS --mode finetune --unfreeze all --freeze-epochs 0 --epochs 1 --no-augment
[--train-bn]` (the whole command: image checks, the epoch, validation, test, report) against
`finetune_epoch_torch.py` on the split whisker saved (its loop only). Prints a Markdown table
of seconds (best of --rounds), the ratio and both peaks of resident memory.

    tools/bench/epoch.py [--threads 2] [--limit 320] [--bn eval] [--rounds 2] [MODEL...]

Models: efficientnet_lite0 (its real weights, from the testdata) and torchvision's resnet18,
resnet50, mobilenet_v2, mobilenet_v3_large (random weights written once by PyTorch, the same
file on both sides: speed does not depend on the values). PYTHON: the interpreter with torch
and torchvision (default: tools/bench/setup.sh's venv); WHISKER_TESTDATA: the testdata.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from compare import cpu  # noqa: E402

DEFAULT = ["efficientnet_lite0", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large"]


def timed(cmd):
    """Run `cmd` under /usr/bin/time -v: (stdout, peak resident MB)."""
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return p.stdout, peak / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=320)
    ap.add_argument("--bn", choices=["eval", "train"], default="eval")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    python = os.environ.get("PYTHON") or subprocess.run(
        [os.path.join(ROOT, "tools", "bench", "setup.sh")], capture_output=True, text=True,
        check=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "whisker-cli"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    whisker = os.path.join(target, "release", "whisker")
    testdata = os.environ.get("WHISKER_TESTDATA", os.path.join(ROOT, ".testdata"))
    work = tempfile.mkdtemp(prefix="whisker-epoch-")
    data = os.path.join(work, "digits")
    subprocess.run([whisker, "data", "digits", data, "--limit", str(a.limit)], check=True,
                   capture_output=True)
    model_cpu, flags = cpu()
    rows = []
    for m in a.models or DEFAULT:
        if m == "efficientnet_lite0":
            weights = os.path.join(testdata, "efficientnet-lite0-57934424.pth")
        else:
            weights = os.path.join(work, f"{m}.pth")
            subprocess.run([python, "-c", f"import torch, torchvision; torch.manual_seed(0); "
                            f"torch.save(torchvision.models.{m}().state_dict(), {weights!r})"],
                           check=True)
        best = {}
        # one run directory: whisker writes the split (the same each time: same seed) that
        # the twin reads, so round 0 starts with whisker
        run = os.path.join(work, f"run-{m}")
        for r in range(a.rounds):
            for side in (["whisker", "torch"] if r % 2 == 0 else ["torch", "whisker"]):
                if side == "whisker":
                    cmd = [whisker, "--threads", str(a.threads), "train", data, "--out", run,
                           "--force", "-q", "--json", "-b", m, "-w", weights, "--mode", "finetune",
                           "--unfreeze", "all", "--freeze-epochs", "0", "--epochs", "1",
                           "--no-augment"] + (["--train-bn"] if a.bn == "train" else [])
                    t = time.perf_counter()
                    _, peak = timed(cmd)
                    res = {"seconds": time.perf_counter() - t, "peak": peak}
                else:
                    out, peak = timed([python, os.path.join(ROOT, "tools", "bench",
                                                            "finetune_epoch_torch.py"),
                                       "--data", data, "--run", run, "--weights", weights,
                                       "--model", m, "--bn", a.bn, "--threads", str(a.threads)])
                    res = {"seconds": json.loads(out.strip().splitlines()[-1])["seconds"],
                           "peak": peak}
                if side not in best or res["seconds"] < best[side]["seconds"]:
                    best[side] = res
                print(f"  {m} round {r} {side}: {res['seconds']:.1f} s, {res['peak']:.0f} MB",
                      file=sys.stderr)
        rows.append((m, best["whisker"], best["torch"]))
    print(f"\n### One fine-tuning epoch on {a.limit} digits, BatchNorm {a.bn}, {a.threads} thread(s)\n")
    print(f"CPU: {model_cpu}; flags: {' '.join(flags)}. Best of {a.rounds} alternated rounds; whisker: the "
          "whole command; PyTorch: its loop (2-worker DataLoader). Peak resident memory from "
          "/usr/bin/time (PyTorch: main process).\n")
    print("| backbone | whisker s | PyTorch s | whisker speed / PyTorch | whisker peak MB | PyTorch peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, w, t in rows:
        print(f"| {m} | {w['seconds']:.1f} | {t['seconds']:.1f} | {t['seconds'] / w['seconds']:.2f}× "
              f"| {w['peak']:.0f} | {t['peak']:.0f} |")


if __name__ == "__main__":
    main()
