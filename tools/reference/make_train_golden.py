#!/usr/bin/env python3
"""Golden fine-tuning steps computed with PyTorch, for `crates/whisker/tests/train_parity.rs`:
every parameter trainable, BatchNorm in eval mode (whisker's fine-tuning default: frozen
running statistics, trainable affine parameters), cross-entropy over the backbone's own
1000-class classifier, plain SGD with momentum 0.9 (PyTorch's semantics). Run by a developer
(not CI) after `tools/fetch-testdata.sh`:

    <venv>/bin/python tools/reference/make_train_golden.py --data .testdata --out crates/whisker/tests/golden
    <venv>/bin/python tools/reference/make_train_golden.py --bn train ...
    <venv>/bin/python tools/reference/make_train_golden.py --models convnext_tiny --stem train_convnext ...

`--bn train` (whisker's `--train-bn`) normalises with each batch's statistics and updates
the running ones (momentum 0.1, unbiased variance; dropout stays off): it writes
`train_bn.safetensors` / `train_bn.json`, with every BatchNorm's running mean and variance
after the 3 steps.

The reference is computed in float64 (the exact answer, as far as a test can tell); the same
steps in float32 give PyTorch's own error, against which whisker's float32 is judged (a
first-layer weight gradient of VGG-16-BN is a sum of 18,000 terms that cancel: PyTorch's
float32 is 1e-3 away from float64 there). Per backbone it writes the loss before each of 3
SGD steps and after them, and for every parameter's gradient at the first step: its L2 norm,
its sum of absolute values, 256 evenly strided elements and its dot products with 8
pseudo-random sign vectors (whose relative error estimates the whole gradient's: whole
gradients would be hundreds of MB), and PyTorch float32's relative L2 error on the whole
gradient, on those elements and on those projections. One family each: resnet18,
vgg16_bn, mobilenet_v2, mobilenet_v3_small with formula weights (as make_golden.py), and
EfficientNet-Lite0 with its real weights. Input: chelsea.png and coffee.png, resized and
centre-cropped to 96 px (small, so the test is quick), labels 282 (tiger cat) and 967 (espresso).
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

import make_golden as g

SIZE, RESIZE = 96, 110
LABELS = [282, 967]
LR, MOMENTUM, STEPS = 1e-4, 0.9, 3
SAMPLES = 256


PHOTOS = ["chelsea.png", "coffee.png"]
# batch statistics over two 96-pixel photos are too few values in the deep layers (3×3 maps:
# 18 per channel) for float32 to follow float64 through three steps: four 128-pixel photos
BN_PHOTOS = PHOTOS + ["astronaut.png", "rocket.jpg"]
BN_LABELS = LABELS + [834, 812]  # suit, space shuttle
BN_SIZE, BN_RESIZE = 128, 146


def batch(data, norm, interpolation=g.T.InterpolationMode.BILINEAR):
    xs = [g.to_input(g.crop_u8(os.path.join(data, f), RESIZE, SIZE, interpolation), norm)
          for f in PHOTOS]
    return torch.cat(xs, 0)


PROJECTIONS = 8


def signs(n, j):
    """±1 for each of n elements, projection j: an integer hash (mirrored in
    crates/whisker/tests/train_parity.rs)."""
    m32 = np.uint64(0xFFFFFFFF)
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(0x9E3779B1) + np.uint64(j) * np.uint64(0x85EBCA6B) + np.uint64(0x165667B1)) & m32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & m32
    h ^= h >> np.uint64(12)
    return np.where((h & np.uint64(1)) == 1, 1.0, -1.0)


def projections(grad):
    """The gradient's dot products with PROJECTIONS pseudo-random sign vectors (float64): their
    relative error estimates the whole gradient's relative L2 error."""
    flat = grad.detach().flatten().double().numpy()
    return [float(np.dot(flat, signs(flat.size, j))) for j in range(PROJECTIONS)]


def summarise(grad):
    flat = grad.detach().flatten().double()
    n = flat.numel()
    k = min(n, SAMPLES)
    idx = (torch.arange(k, dtype=torch.int64) * n) // k
    return {
        "norm": float(flat.norm()),
        "abs_sum": float(flat.abs().sum()),
        "samples": flat[idx].float(),
    }


BN_TRAIN = False


def steps(model, x, dtype):
    """Losses before each step and after the last; the first step's gradients by name."""
    model = model.to(dtype)
    model.eval()
    if BN_TRAIN:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    y = torch.tensor(LABELS)
    x = x.to(dtype)
    losses, grads = [], {}
    for step in range(STEPS + 1):
        opt.zero_grad()
        with torch.enable_grad():
            logits = model(x)
            if isinstance(logits, tuple):
                logits = logits[1]
            loss = F.cross_entropy(logits, y)
        losses.append(float(loss))
        if step == STEPS:
            break
        loss.backward()
        if step == 0:
            grads = {k: p.grad.detach().double().clone() for k, p in model.named_parameters()}
        opt.step()
    if BN_TRAIN:
        running = {k: b.detach().double().clone() for k, b in model.named_buffers()
                   if k.endswith("running_mean") or k.endswith("running_var")}
        return losses, grads, running
    return losses, grads, {}


def run(name, make, x, out, manifest):
    losses, grads, running = steps(make(), x, torch.float64)
    losses32, grads32, running32 = steps(make(), x, torch.float32)
    stats = []
    for k, v in running.items():
        out[f"{name}.{k}"] = v.float().contiguous()
        err32 = float((running32[k] - v).norm() / v.norm().clamp_min(1e-300))
        stats.append({"key": k, "torch_f32_rel_l2": err32})
    keys = []
    for k, g64 in grads.items():
        s = summarise(g64)
        out[f"{name}.{k}.samples"] = s["samples"].contiguous()
        err32 = float((grads32[k] - g64).norm() / g64.norm().clamp_min(1e-300))
        s32 = summarise(grads32[k])["samples"].double()
        s64 = s["samples"].double()
        err32s = float((s32 - s64).norm() / s64.norm().clamp_min(1e-300))
        p64, p32 = np.array(projections(g64)), np.array(projections(grads32[k]))
        err32p = float(np.linalg.norm(p32 - p64) / max(np.linalg.norm(p64), 1e-300))
        keys.append({"key": k, "shape": list(g64.shape), "norm": s["norm"],
                     "abs_sum": s["abs_sum"], "projections": p64.tolist(),
                     "torch_f32_rel_l2": err32, "torch_f32_samples_rel_l2": err32s,
                     "torch_f32_projections_rel_l2": err32p})
    manifest[name] = {"losses": losses, "losses_torch_f32": losses32, "grads": keys,
                      "running": sorted(stats, key=lambda r: r["key"])}
    worst = max(keys, key=lambda k: k["torch_f32_rel_l2"])
    print(name, "losses", [f"{l:.6f}" for l in losses], len(keys), "parameters; PyTorch f32's worst",
          f"{worst['torch_f32_rel_l2']:.1e}", worst["key"])


def calibration_batch(data):
    """The BatchNorm calibration photos at SIZE from three resizes, and mirrored."""
    xs = []
    for p in g.CALIBRATION_PHOTOS:
        for resize in (RESIZE, 128, 160):
            img = g.crop_u8(os.path.join(data, p), resize, SIZE)
            xs += [g.to_input(img, "imagenet"), g.to_input(g.T.functional.hflip(img), "imagenet")]
    return torch.cat(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".testdata")
    ap.add_argument("--out", default="crates/whisker/tests/golden")
    ap.add_argument("--bn", choices=["eval", "train"], default="eval")
    ap.add_argument("--models", nargs="*", help="only these torchvision models (formula weights), "
                    "written to train_<--stem>.safetensors/json")
    ap.add_argument("--stem", help="the output files' stem with --models")
    args = ap.parse_args()
    global BN_TRAIN, PHOTOS, LABELS, SIZE, RESIZE
    BN_TRAIN = args.bn == "train"
    stem = "train_bn" if BN_TRAIN else "train"
    if args.models:
        stem = args.stem or "train_" + "_".join(args.models)
    if BN_TRAIN:
        PHOTOS, LABELS, SIZE, RESIZE = BN_PHOTOS, BN_LABELS, BN_SIZE, BN_RESIZE
    if args.models and all(m in g.DINOV2 for m in args.models):
        SIZE, RESIZE = 98, 112  # DINOv2 takes whole 14-pixel patches only (a 7×7 grid)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    out, manifest = {}, {"torch": torch.__version__, "size": SIZE, "resize": RESIZE,
                         "labels": LABELS, "lr": LR, "momentum": MOMENTUM, "steps": STEPS,
                         "samples": SAMPLES, "bn": args.bn, "photos": PHOTOS, "models": {}}
    for name in args.models or ["resnet18", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small"]:
        bn = {}
        if name.startswith(tuple(g.CALIBRATE_BN)):
            # BatchNorm statistics measured on real photos at this input size (those of the
            # 384-pixel parity golden leave a 96-pixel input's activations out of range): four
            # photos at three scales, and their mirror images, each variance + 0.1 (the
            # deep layers' 3×3 maps give noisy variances, whose large gains made three SGD
            # steps diverge; with the offset PyTorch float32's worst gradient is 2e-6 off
            # float64, against 3e-5 without)
            m = getattr(torchvision.models, name)(weights=None)
            g.fill_formula(m)
            bn = g.calibrate_bn_on(m, calibration_batch(args.data), var_offset=0.1)
            out.update({f"{name}.bn.{k}": v for k, v in bn.items()})

        def make(name=name, bn=bn):
            if name in g.DINOV2:  # timm's, formula weights, with the ImageNet linear head
                m, head, features = g.dinov2_model(name)
                m.linear_head = head  # its parameters named `linear_head.*`, as whisker's
                m.forward = lambda x: m.linear_head(features(x))
                return m
            m = getattr(torchvision.models, name)(weights=None)
            g.fill_formula(m)
            m.load_state_dict({k: v.float() for k, v in bn.items()}, strict=False)
            if name.startswith("vit_"):  # 96 px: the position embeddings resampled
                g.any_size_vit(m)
            return m
        # (the resize's filter as the weights' preprocessing: DINOv2's is bicubic)
        interpolation = (g.T.InterpolationMode.BICUBIC if name in g.DINOV2
                         else g.T.InterpolationMode.BILINEAR)
        run(name, make, batch(args.data, "imagenet", interpolation), out, manifest["models"])
    if args.models:
        save_file(out, os.path.join(args.out, f"{stem}.safetensors"))
        with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        return

    def lite():
        m = g.EfficientNetLite(1.0, 1.0)
        m.load_state_dict(torch.load(os.path.join(args.data, "efficientnet-lite0-57934424.pth"),
                                     map_location="cpu", weights_only=True), strict=True)
        return m
    run("efficientnet_lite0", lite, batch(args.data, "tf"), out, manifest["models"])
    save_file(out, os.path.join(args.out, f"{stem}.safetensors"))
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
