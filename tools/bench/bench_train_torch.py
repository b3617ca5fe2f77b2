#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example bench_train`: one fine-tuning step (forward,
cross-entropy, backward, SGD with momentum 0.9 or AdamW) of the same model with its 1000-class
classifier, same batch, input size, thread count, BatchNorm mode (eval: running statistics;
train: batch statistics; dropout off either way, as whisker has none) and trainable
parameters (`--keys FILE` from bench_train: `MODEL KEY` per line; absent: all). One JSON
object per line.

    python tools/bench/bench_train_torch.py --threads 2 --batch 16 --bn eval [--optim sgd]
        [--keys FILE] [--min-seconds 1] MODEL...
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import ALL, build, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bn", choices=["eval", "train"], default="eval")
    ap.add_argument("--optim", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--unfreeze", default="all")
    ap.add_argument("--keys")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.set_grad_enabled(True)  # the reference generator imported above turns it off
    keys = {}
    if a.keys:
        for line in open(a.keys):
            m, k = line.split()
            keys.setdefault(m, set()).add(k)
    for name in a.models or ALL:
        m, size = build(name)
        m.eval()
        if a.bn == "train":
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.train()
        wanted = keys.get(name)
        params = []
        for k, p in m.named_parameters():
            on = wanted is None or k in wanted
            p.requires_grad_(on)
            if on:
                params.append(p)
        if wanted is not None and len(params) != len(wanted):
            sys.exit(f"{name}: {len(wanted)} trainable keys asked, {len(params)} found")
        opt = (torch.optim.SGD(params, lr=1e-4, momentum=0.9) if a.optim == "sgd"
               else torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2))
        x = torch.randn(a.batch, 3, size, size)
        y = torch.tensor([(i * 389) % 1000 for i in range(a.batch)])

        def step():
            opt.zero_grad(set_to_none=True)
            logits = m(x)
            if isinstance(logits, tuple):  # the Lite reference model returns (features, logits)
                logits = logits[1]
            F.cross_entropy(logits, y).backward()
            opt.step()

        secs, iters = timed(step, a.min_seconds)
        print(json.dumps({"impl": "torch", "model": name, "threads": a.threads, "batch": a.batch,
                          "size": size, "bn": a.bn, "optim": a.optim, "unfreeze": a.unfreeze,
                          "trainable_tensors": len(params), "iters": iters,
                          "ms_per_step": round(secs * 1e3, 1),
                          "images_per_s": round(a.batch / secs, 2), "torch": torch.__version__,
                          "isa": torch.backends.cpu.get_cpu_capability()}), flush=True)


if __name__ == "__main__":
    main()
