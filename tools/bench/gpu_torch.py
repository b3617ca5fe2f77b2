#!/usr/bin/env python3
"""PyTorch CUDA twin of `whisker --device cuda bench`: eval forward and training step
images/s, same models, batch sizes, input size (each backbone's own) and step (cross-entropy,
backward, SGD momentum 0.9, every weight trainable, BatchNorm in eval mode). One JSON object
per line, for each precision mode:

- `fp32`: TF32 off for convolutions and matmuls (IEEE fp32, what whisker computes);
- `default`: PyTorch's defaults (cuDNN convolutions in TF32 on Ampere and newer);
- `bf16`, `f16`: automatic mixed precision (`torch.autocast`, f32 weights; f16 training with
  a `GradScaler`), as `whisker --precision bf16|f16`.

    python3 tools/bench/gpu_torch.py [--batch 64,256] [--train-batch 64] [--min-seconds 3]
        [--modes fp32,default,bf16,f16] [MODEL...]
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import build  # noqa: E402



def logits(out):
    """The reference EfficientNet-Lite returns (features, logits); torchvision, the logits."""
    return out[-1] if isinstance(out, tuple) else out


def timed(fn, warmup, min_seconds):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    iters = 0
    while iters < 2 or time.perf_counter() - t < min_seconds:
        fn()
        iters += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters, iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--train-batch", default="64")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="fp32,default")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_grad_enabled(True)  # the reference models' module turns it off
    dev = torch.device("cuda")
    batches = [int(b) for b in a.batch.split(",") if int(b) > 0]
    train_batches = [int(b) for b in a.train_batch.split(",") if int(b) > 0]
    for mode in a.modes.split(","):
        strict = mode == "fp32"
        torch.backends.cudnn.allow_tf32 = not strict
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        low = {"bf16": torch.bfloat16, "f16": torch.float16}.get(mode)

        def autocast():
            return (torch.autocast("cuda", dtype=low) if low is not None
                    else contextlib.nullcontext())
        scaler = torch.amp.GradScaler("cuda") if mode == "f16" else None
        for name in a.models or ["resnet50", "mobilenet_v2", "efficientnet_lite0"]:
            m, size = build(name)
            m = m.to(dev)
            base = {"impl": "pytorch", "torch": torch.__version__, "mode": mode, "model": name,
                    "size": size, "gpu": torch.cuda.get_device_name(0)}
            for b in batches:
                x = torch.rand(b, 3, size, size, device=dev)
                m.eval()
                with torch.inference_mode(), autocast():
                    secs, iters = timed(lambda: logits(m(x)).cpu(), a.warmup, a.min_seconds)
                print(json.dumps({**base, "kind": "eval", "batch": b, "iters": iters,
                                  "ms_per_batch": round(secs * 1e3, 2),
                                  "images_per_s": round(b / secs, 2)}), flush=True)
            for b in train_batches:
                x = torch.rand(b, 3, size, size, device=dev)
                y = torch.tensor([(i * 389) % 1000 for i in range(b)], device=dev)
                m.eval()  # BatchNorm frozen, as whisker's fine-tuning default
                for p in m.parameters():
                    p.requires_grad_(True)
                opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)

                def step():
                    opt.zero_grad(set_to_none=True)
                    with autocast():
                        loss = F.cross_entropy(logits(m(x)).float(), y)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    return loss.item()

                secs, iters = timed(step, a.warmup, a.min_seconds)
                print(json.dumps({**base, "kind": "train", "batch": b, "iters": iters,
                                  "ms_per_batch": round(secs * 1e3, 2),
                                  "images_per_s": round(b / secs, 2)}), flush=True)
            del m
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
