#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example bench_extract`: the same photos, the same
preprocessing (PIL decode, Resize(256) bilinear, CenterCrop, ToTensor, Normalize), a
DataLoader with 2 workers, batch 16, eval forward with `torch.set_num_threads(THREADS)`.

    python tools/bench/bench_extract_torch.py --threads 2 --images 96 [MODEL...]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from make_golden import LITE, EfficientNetLite  # noqa: E402


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = os.environ.get("WHISKER_TESTDATA", os.path.join(os.path.dirname(__file__), "..", "..", ".testdata"))
    photos = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    tmp = tempfile.mkdtemp()
    paths = []
    for i in range(a.images):
        dst = os.path.join(tmp, f"{i:04}-{photos[i % 4]}")
        shutil.copy(os.path.join(data, photos[i % 4]), dst)
        paths.append(dst)
    for name in a.models or ["efficientnet_lite0", "resnet50"]:
        if name in LITE:
            m = EfficientNetLite(*LITE[name][:2])
            norm = T.Lambda(lambda x: (x * 255 - 127) / 128)
        else:
            m = getattr(torchvision.models, name)(weights=None)
            norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        m.eval()
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
        dl = torch.utils.data.DataLoader(Files(paths, tf), batch_size=16, num_workers=a.workers)
        with torch.inference_mode():
            for x in torch.utils.data.DataLoader(Files(paths[:16], tf), batch_size=16):
                m(x)
            t = time.perf_counter()
            for x in dl:
                m(x)
            secs = time.perf_counter() - t
        print(json.dumps({"impl": "pytorch", "bench": "extract", "model": name, "threads": a.threads,
                          "workers": a.workers, "images": a.images, "seconds": round(secs, 3),
                          "images_per_s": round(a.images / secs, 2)}), flush=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
