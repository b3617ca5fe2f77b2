#!/usr/bin/env python3
"""Golden fine-tuning steps computed with PyTorch, for `crates/whisker/tests/train_parity.rs`:
every parameter trainable, BatchNorm in eval mode (whisker's fine-tuning default: frozen
running statistics, trainable affine parameters), cross-entropy over the backbone's own
1000-class classifier, plain SGD with momentum 0.9 (PyTorch's semantics). Run by a developer
(not CI) after `tools/fetch-testdata.sh`:

    <venv>/bin/python tools/reference/make_train_golden.py --data .testdata --out crates/whisker/tests/golden

The reference is computed in float64 (the exact answer, as far as a test can tell); the same
steps in float32 give PyTorch's own error, against which whisker's float32 is judged (a
first-layer weight gradient of VGG-16-BN is a sum of 18,000 terms that cancel: PyTorch's
float32 is 1e-3 away from float64 there). Per backbone it writes the loss before each of 3
SGD steps and after them, and for every parameter's gradient at the first step: its L2 norm,
its sum of absolute values and 256 evenly strided elements (whole gradients would be hundreds
of MB), and PyTorch float32's relative L2 error on the whole gradient. One family each: resnet18,
vgg16_bn, mobilenet_v2, mobilenet_v3_small with formula weights (as make_golden.py), and
EfficientNet-Lite0 with its real weights. Input: chelsea.png and coffee.png, resized and
centre-cropped to 96 px (small, so the test is quick), labels 282 (tiger cat) and 967 (espresso).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

import make_golden as g

SIZE, RESIZE = 96, 110
LABELS = [282, 967]
LR, MOMENTUM, STEPS = 1e-4, 0.9, 3
SAMPLES = 256


def batch(data, norm):
    xs = [g.to_input(g.crop_u8(os.path.join(data, f), RESIZE, SIZE), norm)
          for f in ("chelsea.png", "coffee.png")]
    return torch.cat(xs, 0)


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


def steps(model, x, dtype):
    """Losses before each step and after the last; the first step's gradients by name."""
    model = model.to(dtype)
    model.eval()
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
    return losses, grads


def run(name, make, x, out, manifest):
    losses, grads = steps(make(), x, torch.float64)
    losses32, grads32 = steps(make(), x, torch.float32)
    keys = []
    for k, g64 in grads.items():
        s = summarise(g64)
        out[f"{name}.{k}.samples"] = s["samples"].contiguous()
        err32 = float((grads32[k] - g64).norm() / g64.norm().clamp_min(1e-300))
        keys.append({"key": k, "shape": list(g64.shape), "norm": s["norm"],
                     "abs_sum": s["abs_sum"], "torch_f32_rel_l2": err32})
    manifest[name] = {"losses": losses, "losses_torch_f32": losses32, "grads": keys}
    worst = max(keys, key=lambda k: k["torch_f32_rel_l2"])
    print(name, "losses", [f"{l:.6f}" for l in losses], len(keys), "parameters; PyTorch f32's worst",
          f"{worst['torch_f32_rel_l2']:.1e}", worst["key"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".testdata")
    ap.add_argument("--out", default="crates/whisker/tests/golden")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    out, manifest = {}, {"torch": torch.__version__, "size": SIZE, "resize": RESIZE,
                         "labels": LABELS, "lr": LR, "momentum": MOMENTUM, "steps": STEPS,
                         "samples": SAMPLES, "models": {}}
    for name in ["resnet18", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small"]:
        def make(name=name):
            m = getattr(torchvision.models, name)(weights=None)
            g.fill_formula(m)
            return m
        run(name, make, batch(args.data, "imagenet"), out, manifest["models"])

    def lite():
        m = g.EfficientNetLite(1.0, 1.0)
        m.load_state_dict(torch.load(os.path.join(args.data, "efficientnet-lite0-57934424.pth"),
                                     map_location="cpu", weights_only=True), strict=True)
        return m
    run("efficientnet_lite0", lite, batch(args.data, "tf"), out, manifest["models"])
    save_file(out, os.path.join(args.out, "train.safetensors"))
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
