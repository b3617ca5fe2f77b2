#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example bench_igrad`: d(logit 281)/d(pixels) through
an eval-mode model with frozen weights (normalisation included, as whisker's forward takes
pixels), same models, batch, input size and thread count. One JSON object per line.

    python tools/bench/bench_igrad_torch.py --threads 2 [--batch 1] [--min-seconds 1] [MODEL...]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import ALL, build, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.set_grad_enabled(True)  # the reference generator imported above turns it off
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for name in a.models or ALL:
        m, size = build(name)
        for p in m.parameters():
            p.requires_grad_(False)
        x0 = torch.rand(a.batch, 3, size, size)

        def step():
            x = x0.clone().requires_grad_(True)
            logits = m((x - mean) / std)
            if isinstance(logits, tuple):  # the Lite reference model also returns its taps
                logits = next(t for t in logits if t.dim() == 2 and t.shape[1] == 1000)
            logits[:, 281].sum().backward()
            return x.grad

        secs, iters = timed(step, a.min_seconds)
        print(json.dumps({"impl": "torch", "model": name, "threads": a.threads, "batch": a.batch,
                          "size": size, "iters": iters, "ms_per_step": round(secs * 1e3, 2),
                          "torch": torch.__version__,
                          "isa": torch.backends.cpu.get_cpu_capability()}), flush=True)


if __name__ == "__main__":
    main()
