#!/usr/bin/env python3
"""PyTorch twins of `whisker dream` and `whisker attack`, the same loops on the same model
(EfficientNet-Lite0, its real weights), for tools/bench/inspect.sh. Prints one JSON line with
the loop's seconds (model loading and Python start-up excluded).

    python tools/bench/inspect_torch.py dream --weights efficientnet-lite0-57934424.pth [--steps 300]
    python tools/bench/inspect_torch.py attack --weights W --image chelsea.png [--steps 10]

dream: a 256² image, decorrelated parameterisation (orthonormal DCT basis scaled by
1/frequency, ImageNet colour decorrelation, sigmoid), each step a random shift (±16 px),
scale (1/1.1–1.1) and rotation (±5°) by affine grid + bilinear grid sample to 224², the class
logit minus 0.01 × total variation, Adam (lr 0.05). attack: PGD L∞ 4/255, step 1/255, targeted
("zebra"), through the antialiased bilinear resize (shorter side 256) and the centre crop of
the photo at its own resolution.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from make_golden import EfficientNetLite  # noqa: E402


def lite0(weights):
    m = EfficientNetLite(1.0, 1.0).eval()
    m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    for p in m.parameters():
        p.requires_grad_(False)
    return lambda x: m((x * 255.0 - 127.0) / 128.0)[1]


def dct(n):
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def dream(model, steps, cls=281, s=256, crop=224, lr=0.05, tv=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = dct(s)
    u = torch.arange(s, dtype=torch.float32)
    f = torch.sqrt(u[:, None] ** 2 + u[None, :] ** 2) / (2 * s)
    scale = (1.0 / torch.clamp(f, min=1.0 / s) / s * 16.0)[None]
    colour = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    colour = colour / colour.norm(dim=1).max()
    z = ((torch.rand(3, s, s, generator=g) * 2 - 1) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    frac = crop / s
    t = time.perf_counter()
    for _ in range(steps):
        spatial = b.t() @ (z * scale) @ b
        img = torch.sigmoid((colour @ spatial.reshape(3, -1)).reshape(3, s, s))
        dx, dy = (torch.randint(-16, 17, (2,), generator=g) * 2.0 / s).tolist()
        sc = math.exp(math.log(1.1) * (2 * torch.rand(1, generator=g).item() - 1))
        th = math.radians(5.0 * (2 * torch.rand(1, generator=g).item() - 1))
        a = frac / sc
        theta = torch.tensor([[[a * math.cos(th), -a * math.sin(th), dx],
                               [a * math.sin(th), a * math.cos(th), dy]]])
        grid = F.affine_grid(theta, [1, 3, crop, crop], align_corners=True)
        view = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)
        tvl = (img[:, :, 1:] - img[:, :, :-1]).abs().mean() + (img[:, 1:] - img[:, :-1]).abs().mean()
        objective = model(view)[0, cls] - tv * tvl
        opt.zero_grad()
        (-objective).backward()
        opt.step()
    return time.perf_counter() - t


def attack(model, image, steps, target=340, eps=4 / 255, alpha=1 / 255):
    x0 = torch.from_numpy(np.asarray(Image.open(image).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    _, h, w = x0.shape
    r = 256 / min(h, w)
    size = (round(h * r), round(w * r))
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    y = torch.tensor([target])
    x = x0.clone()
    t = time.perf_counter()
    for _ in range(steps):
        x.requires_grad_(True)
        v = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)
        v = v[:, :, top:top + 224, left:left + 224]
        loss = F.cross_entropy(model(v), y)
        (gx,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = (x0 + (x - alpha * gx.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["dream", "attack"])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.set_grad_enabled(True)
    model = lite0(a.weights)
    if a.what == "dream":
        steps = a.steps or 300
        secs = dream(model, steps)
    else:
        steps = a.steps or 10
        secs = attack(model, a.image, steps)
    print(json.dumps({"impl": "torch", "what": a.what, "steps": steps, "threads": a.threads,
                      "seconds": round(secs, 2), "torch": torch.__version__,
                      "isa": torch.backends.cpu.get_cpu_capability()}), flush=True)


if __name__ == "__main__":
    main()
