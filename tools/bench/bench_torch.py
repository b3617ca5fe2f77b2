#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example bench_forward`: eval forward images/s,
same models, batch, input size and thread count. One JSON object per line.

    python tools/bench/bench_torch.py --threads 2 [--batch 16] [--iters 3] [MODEL...]
"""
import argparse
import json
import os
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from make_golden import LITE, EfficientNetLite  # noqa: E402

ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19",
       "vgg16_bn", "vgg19_bn", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
       "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
       "efficientnet_lite4"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    for name in a.models or ALL:
        if name in LITE:
            w, d, _, _ = LITE[name]
            m = EfficientNetLite(w, d)
        else:
            m = getattr(torchvision.models, name)(weights=None)
        m = m.eval()
        x = torch.rand(a.batch, 3, 224, 224)
        with torch.inference_mode():
            m(x)
            t = time.perf_counter()
            for _ in range(a.iters):
                m(x)
            secs = (time.perf_counter() - t) / a.iters
        print(json.dumps({"impl": "pytorch", "model": name, "threads": a.threads, "batch": a.batch,
                          "size": 224, "seconds_per_batch": round(secs, 4),
                          "images_per_s": round(a.batch / secs, 2),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
