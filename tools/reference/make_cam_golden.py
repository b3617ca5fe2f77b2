#!/usr/bin/env python3
"""Golden class-activation maps (Grad-CAM, Grad-CAM++) computed with PyTorch, for
`crates/whisker/tests/cam.rs`. Run by a developer (not CI) after `tools/fetch-testdata.sh`:

    <venv>/bin/python tools/reference/make_cam_golden.py --data .testdata --out crates/whisker/tests/golden

The maps follow the papers' definitions as pytorch-grad-cam implements them:
  Grad-CAM:   w_k = mean_ij dY_c/dA_kij;  map = relu(sum_k w_k A_k)
  Grad-CAM++: a_kij = g^2 / (2 g^2 + sum_ij(A_k) g^3 + 1e-6) (0 where g = 0);
              w_k = sum_ij a_kij relu(g_kij);  map = relu(sum_k w_k A_k)
on chelsea.png through the model's own preprocessing. EfficientNet-Lite0 has its real weights;
the torchvision backbones formula weights (as in make_golden.py).
"""
import argparse
import json
import os

import torch
import torchvision
from safetensors.torch import save_file

import make_golden as g


def cam_maps(a, grad):
    """a, grad: [C, H, W] -> (gradcam, gradcam++) maps [H, W] (float64 sums, as whisker)."""
    a, grad = a.double(), grad.double()
    w = grad.mean((1, 2))
    gc = torch.relu((w[:, None, None] * a).sum(0))
    g2 = grad ** 2
    g3 = g2 * grad
    sum_a = a.sum((1, 2))
    aij = g2 / (2 * g2 + sum_a[:, None, None] * g3 + 1e-6)
    aij = torch.where(grad != 0, aij, torch.zeros_like(aij))
    wpp = (torch.relu(grad) * aij).sum((1, 2))
    gpp = torch.relu((wpp[:, None, None] * a).sum(0))
    return gc.float(), gpp.float()


def explain(x, module, forward):
    """(activation, gradient of the top-1 logit, top-1) at `module`'s output."""
    store = {}

    def hook(_m, _i, o):
        o.retain_grad()
        store["a"] = o

    h = module.register_forward_hook(hook)
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        logits = forward(x)
        top = int(logits[0].argmax())
        logits[0, top].backward()
    h.remove()
    a = store["a"]
    return a[0].detach(), a.grad[0].detach(), top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".testdata")
    ap.add_argument("--out", default="crates/whisker/tests/golden")
    args = ap.parse_args()
    torch.set_num_threads(2)
    chelsea = os.path.join(args.data, "chelsea.png")
    out, manifest = {}, {"torch": torch.__version__, "cases": []}

    lite = g.EfficientNetLite(1.0, 1.0).eval()
    lite.load_state_dict(torch.load(os.path.join(args.data, "efficientnet-lite0-57934424.pth"),
                                    map_location="cpu", weights_only=True), strict=True)
    x = g.to_input(g.crop_u8(chelsea, 256, 224), "tf")

    # the head's output is relu6(bn(conv)) inside forward: wrap it as a module to hook
    class Head(torch.nn.Module):
        def forward(self, t):
            return t

    head = Head()
    orig = lite.forward

    def forward_with_head(t):
        t = torch.nn.functional.relu6(lite._bn0(lite._conv_stem(g.same_pad(t, 3, 2))))
        for b in lite._blocks:
            t = b(t)
        t = head(torch.nn.functional.relu6(lite._bn1(lite._conv_head(t))))
        return lite._fc(t.mean((2, 3)))

    cases = [("efficientnet_lite0", "head", head, forward_with_head),
             ("efficientnet_lite0", "_blocks.12", lite._blocks[12], lambda t: orig(t)[1])]
    for name in ["resnet18", "mobilenet_v3_large"]:
        m = getattr(torchvision.models, name)(weights=None).eval()
        g.fill_formula(m)
        layer = {"resnet18": "layer4", "mobilenet_v3_large": "features.16"}[name]
        cases.append((name, layer, m.get_submodule(layer), m))
    for name, layer, module, fwd in cases:
        xin = x if name.startswith("efficientnet") else g.to_input(g.crop_u8(chelsea, 256, 224),
                                                                  "imagenet")
        a, grad, top = explain(xin, module, fwd)
        gc, gpp = cam_maps(a, grad)
        key = f"{name}.{layer}"
        out[f"{key}.gradcam"] = gc.contiguous()
        out[f"{key}.gradcam++"] = gpp.contiguous()
        manifest["cases"].append({"model": name, "layer": layer, "class": top,
                                  "shape": list(gc.shape)})
        print(key, "class", top, "map", tuple(gc.shape), "peak", divmod(int(gc.argmax()), gc.shape[1]))
    save_file(out, os.path.join(args.out, "cam.safetensors"))
    with open(os.path.join(args.out, "cam.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
