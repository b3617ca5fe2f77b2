#!/usr/bin/env python3
"""Golden reference outputs for whisker's parity tests, computed with PyTorch.

Run by a developer (not CI) after `tools/fetch-testdata.sh`:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision pillow safetensors numpy
    /tmp/ref/bin/python tools/reference/make_golden.py --data .testdata --out crates/whisker/tests/golden

It writes small files that are committed:
  preprocess.json            sha256 of Pillow/torchvision resize + centre-crop results (byte equality)
  <backbone>.safetensors     logits, pooled features, (input gradient), (per-block activation summaries)
  manifest.json              shapes, settings and top-5 per backbone, for humans and the tests

Backbones other than EfficientNet-Lite0 have no real weights on this machine; they are filled with
deterministic "formula weights" (see `formula()` below, mirrored in Rust by
`whisker::weights::formula`), so both sides compute the same network exactly.
"""
import argparse
import hashlib
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

torch.set_grad_enabled(False)
M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# Formula weights (mirror of whisker::weights::formula)
# ----------------------------------------------------------------------------------------------
def fnv1a(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h ^= b
        h = (h * 0x01000193) & M32
    return h


def unit(n: int, key: str) -> np.ndarray:
    """n values in [0, 1) from an integer hash of (key, index)."""
    i = np.arange(n, dtype=np.uint64)
    x = (i * np.uint64(0x9E3779B1) + np.uint64(fnv1a(key))) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 4294967296.0


EMBEDDINGS = ("class_token", "pos_embedding", "cls_token", "pos_embed", "reg_token", "register_tokens")


def formula(key: str, shape) -> np.ndarray:
    n = int(np.prod(shape)) if len(shape) else 1
    u = unit(n, key)
    if key.endswith("running_var"):
        v = 0.5 + u
    elif key.endswith("running_mean"):
        v = 0.1 * (2.0 * u - 1.0)
    elif key.endswith("layer_scale") or key.endswith(".gamma"):  # layer scale: 0.1 to 0.5
        v = 0.1 + 0.4 * u
    elif len(shape) == 1 and key.endswith(".weight"):  # BatchNorm / LayerNorm gamma
        v = 0.6 + 0.4 * u
    elif key.endswith(".bias") or key.endswith("_bias"):
        v = 0.1 * (2.0 * u - 1.0)
    elif key.endswith(EMBEDDINGS):  # a transformer's tokens and position embeddings: ±0.5
        v = 0.5 * (2.0 * u - 1.0)
    else:  # conv / linear weight: He-uniform on fan-in
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
    return v.astype(np.float32).reshape(shape)


def fill_formula(model: nn.Module):
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = torch.zeros_like(v)
        else:
            new[k] = torch.from_numpy(formula(k, tuple(v.shape)))
    model.load_state_dict(new, strict=True)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite with lukemelas key names and TensorFlow 'SAME' padding
# ----------------------------------------------------------------------------------------------
LITE = {  # width, depth, input size, resize
    "efficientnet_lite0": (1.0, 1.0, 224, 256),
    "efficientnet_lite1": (1.0, 1.1, 240, 272),
    "efficientnet_lite2": (1.1, 1.2, 260, 292),
    "efficientnet_lite3": (1.2, 1.4, 280, 309),
    "efficientnet_lite4": (1.4, 1.8, 300, 326),
}
LITE_STAGES = [  # expand, kernel, stride, in, out, repeats
    (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
]


def round_filters(c, width):
    if width == 1.0:
        return c
    c = c * width
    new = max(8, int(c + 4) // 8 * 8)
    if new < 0.9 * c:
        new += 8
    return int(new)


def lite_blocks(width, depth):
    out = []
    for i, (e, k, s, cin, cout, r) in enumerate(LITE_STAGES):
        cin = cin if i == 0 else round_filters(cin, width)
        cout = round_filters(cout, width)
        if not (i == 0 or i == len(LITE_STAGES) - 1):
            r = int(math.ceil(depth * r))
        for j in range(r):
            out.append((e, k, s if j == 0 else 1, cin if j == 0 else cout, cout))
    return out


def same_pad(x, k, s):
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class LiteBlock(nn.Module):
    def __init__(self, e, k, s, cin, cout):
        super().__init__()
        mid = cin * e
        self.k, self.s, self.e = k, s, e
        self.res = s == 1 and cin == cout
        if e != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, s, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x):
        y = x
        if self.e != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(same_pad(y, self.k, self.s))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.res else y


class EfficientNetLite(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        specs = lite_blocks(width, depth)
        self._blocks = nn.ModuleList([LiteBlock(*b) for b in specs])
        self._conv_head = nn.Conv2d(specs[-1][4], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x, taps=None):
        x = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
        if taps is not None:
            taps.append(("stem", x))
        for i, b in enumerate(self._blocks):
            x = b(x)
            if taps is not None:
                taps.append((f"_blocks.{i}", x))
        x = F.relu6(self._bn1(self._conv_head(x)))
        if taps is not None:
            taps.append(("head", x))
        f = x.mean((2, 3))
        return f, self._fc(f)


# ----------------------------------------------------------------------------------------------
# Preprocessing, exactly as torchvision does on a PIL image
# ----------------------------------------------------------------------------------------------
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def crop_u8(path, resize, crop, interpolation=T.InterpolationMode.BILINEAR):
    img = Image.open(path).convert("RGB")
    img = T.CenterCrop(crop)(T.Resize(resize, interpolation=interpolation)(img))
    return img


def to_input(img, norm):
    x = T.functional.to_tensor(img)  # u8 / 255
    if norm == "tf":
        x = (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() - 127.0) / 128.0
    elif norm == "imagenet":
        x = T.functional.normalize(x, *IMAGENET)
    else:  # (mean, std)
        x = T.functional.normalize(x, *norm)
    return x.unsqueeze(0)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def preprocess_goldens(data):
    out = []
    cases = [("chelsea.png", 256), ("chelsea.png", 600), ("rocket.jpg", 256), ("coffee.png", 272),
             ("astronaut.png", 224), ("coffee.png", 300), ("rocket.jpg", 331)]
    for name, size in cases:
        img = Image.open(os.path.join(data, name)).convert("RGB")
        r = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)(img)
        c = T.CenterCrop(min(size, 224) if size != 600 else 512)(r)
        out.append({
            "file": name, "decoded_sha256": sha(img.tobytes()), "size": [img.width, img.height],
            "resize": size, "resized": [r.width, r.height], "resized_sha256": sha(r.tobytes()),
            "crop": c.width, "cropped_sha256": sha(c.tobytes()),
        })
    return out


# ----------------------------------------------------------------------------------------------
# torchvision backbones with formula weights
# ----------------------------------------------------------------------------------------------
TV = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19", "vgg16_bn",
      "vgg19_bn", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
      "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
      "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
      "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
      "regnet_y_16gf", "regnet_y_32gf", "vit_b_16", "vit_b_32", "vit_l_16"]


def last_linear(m):
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    return linears[-1]


# the resize before the 224 crop, where the weights' transforms differ from 256
TV_RESIZE = {"convnext_tiny": 236, "convnext_small": 230, "convnext_base": 232, "convnext_large": 232,
             "vit_l_16": 242}


# families whose preprocessing is their weights' transforms (sizes, filter, mean/std): which
# weights (RegNetY: torchvision's default, IMAGENET1K_V2)
TV_FROM_WEIGHTS = {"efficientnet_v2_": "IMAGENET1K_V1", "regnet_y_": "IMAGENET1K_V2"}


def tv_pre(name):
    """(resize, crop, interpolation, norm) of a torchvision model's weights."""
    weights = next((w for p, w in TV_FROM_WEIGHTS.items() if name.startswith(p)), None)
    if weights:
        t = getattr(torchvision.models.get_model_weights(name), weights).transforms()
        return (t.resize_size[0], t.crop_size[0], t.interpolation, (tuple(t.mean), tuple(t.std)))
    return (TV_RESIZE.get(name, 256), 224, T.InterpolationMode.BILINEAR, "imagenet")


# families whose BatchNorm statistics are measured on real photos (`calibrate_bn`): deep
# networks whose formula statistics let the activations grow until float32 itself is chaotic
# (EfficientNetV2-M in float32 was 42 % off its float64 forward)
# and the offset added to every measured variance (see calibrate_bn)
CALIBRATE_BN = {"efficientnet_v2_": 0.0, "regnet_y_": 0.1}
CALIBRATION_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")


def calibrate_bn(m, data, resize, crop, interp, norm, var_offset):
    """Every BatchNorm's running statistics set to the batch statistics of four real photos,
    measured in float64 layer by layer (train-mode BatchNorm, everything else in eval mode),
    each variance + `var_offset`; returns them by checkpoint key (float16), to be stored in
    the golden file. RegNetY takes 0.1: a channel nearly constant over four photos would
    otherwise get a gain so large that float32 rounding dominates (RegNetY-1.6GF in PyTorch
    float32 was 1e-5 off its float64 forward with the bare statistics, 3e-7 with the offset).
    EfficientNetV2 takes none: its many small-variance channels are its signal (with 0.1 its
    logits hardly depended on the photo: 0.6 % apart for two photos, 171 % without)."""
    x = torch.cat([to_input(crop_u8(os.path.join(data, p), resize, crop, interp), norm)
                   for p in CALIBRATION_PHOTOS])
    return calibrate_bn_on(m, x, var_offset=var_offset)


def calibrate_bn_on(m, x, var_offset=0.0):
    """calibrate_bn on the batch x; `var_offset` added to every variance (a smaller gain)."""
    x = x.double()
    m.double().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a cumulative average: after one batch, the batch's
            mod.train()
    m(x)
    m.float().eval()
    # rounded to float16 (stored so, half the bytes), the model given the rounded values
    stats = {k: (v + var_offset if k.endswith("running_var") else v).half().contiguous()
             for k, v in m.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    m.load_state_dict({k: v.float() for k, v in stats.items()}, strict=False)
    return stats


def any_size_vit(m):
    """torchvision's ViT at any input size (torchvision asserts 224): the position
    embeddings' grid resampled as timm's `resample_abs_pos_embed` does (bicubic, antialiased),
    which whisker does on another grid."""
    from timm.layers import resample_abs_pos_embed

    def process(x):
        n = x.shape[0]
        x = m.conv_proj(x)
        m._grid = list(x.shape[-2:])
        return x.reshape(n, m.hidden_dim, -1).permute(0, 2, 1)

    enc = m.encoder

    def encode(x):
        pos = resample_abs_pos_embed(enc.pos_embedding, m._grid, num_prefix_tokens=1)
        return enc.ln(enc.layers(enc.dropout(x + pos)))

    m._process_input = process
    enc.forward = encode
    return m


def run_tv(name, data, grad_class=None, grad_size=(128, 112)):
    m = getattr(torchvision.models, name)(weights=None).eval()
    fill_formula(m)
    if name.startswith("vit_"):
        any_size_vit(m)
    offset = next((o for p, o in CALIBRATE_BN.items() if name.startswith(p)), None)
    bn = calibrate_bn(m, data, *tv_pre(name), offset) if offset is not None else {}
    feats = {}
    h = last_linear(m).register_forward_hook(lambda mod, i, o: feats.__setitem__("f", i[0]))
    resize, crop, interp, norm = tv_pre(name)
    x = to_input(crop_u8(os.path.join(data, "chelsea.png"), resize, crop, interp), norm)
    logits = m(x)
    h.remove()
    out = {"logits": logits[0].contiguous(), "features": feats["f"][0].contiguous()}
    if grad_class is not None:
        xg = to_input(crop_u8(os.path.join(data, "chelsea.png"), *grad_size), norm)
        with torch.enable_grad():
            xg.requires_grad_(True)
            m(xg)[0, grad_class].backward()
        out["grad"] = xg.grad[0].contiguous()
        out["grad_input_size"] = torch.tensor(list(grad_size), dtype=torch.int64)
    if name.startswith("vit_"):
        # another input size: the position embeddings resampled to its grid
        x112 = to_input(crop_u8(os.path.join(data, "chelsea.png"), 128, 112), norm)
        out["logits_112"] = m(x112)[0].contiguous()
    out.update({f"bn.{k}": v for k, v in bn.items()})
    return out


# DINOv2: whisker's name → (timm's architecture, register tokens)
DINOV2 = {"dinov2_vits14": ("vit_small_patch14_dinov2", 0),
          "dinov2_vitb14": ("vit_base_patch14_dinov2", 0),
          "dinov2_vitl14": ("vit_large_patch14_dinov2", 0),
          "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", 4),
          "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", 4),
          "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", 4)}


def dinov2_model(name):
    """timm's DINOv2 (its position embeddings learnt for 518 px, resampled to the input as
    timm does) with formula weights made in the official checkpoints' names and converted as
    timm converts an official checkpoint; and the ImageNet linear head (`linear_head`, on the
    class token + mean patch token) with formula weights."""
    import timm
    from timm.models.vision_transformer import _convert_dinov2
    tname, reg = DINOV2[name]
    m = timm.create_model(tname, pretrained=False, num_classes=0, img_size=518,
                          dynamic_img_size=True).eval()
    c = m.embed_dim
    official = {}
    for k, v in m.state_dict().items():
        if k == "reg_token":
            continue
        shape = tuple(v.shape)
        if k == "pos_embed" and reg:  # the official layout has the class token's row
            shape = (1, shape[1] + 1, c)
        official[k] = torch.from_numpy(formula(k, shape))
    if reg:
        official["register_tokens"] = torch.from_numpy(formula("register_tokens", (1, reg, c)))
    m.load_state_dict(_convert_dinov2(official, m), strict=True)
    head = nn.Linear(2 * c, 1000)
    head.load_state_dict({"weight": torch.from_numpy(formula("linear_head.weight", (1000, 2 * c))),
                          "bias": torch.from_numpy(formula("linear_head.bias", (1000,)))})

    def features(x):
        t = m.forward_features(x)  # after the final LayerNorm
        return torch.cat([t[:, 0], t[:, m.num_prefix_tokens:].mean(1)], 1)

    return m, head, features


def run_dinov2(name, data, grad_class=None, grad_size=(128, 112)):
    """DINOv2's evaluation transform: bicubic resize to 256, centre crop 224."""
    m, head, features = dinov2_model(name)
    bicubic = T.InterpolationMode.BICUBIC
    x = to_input(crop_u8(os.path.join(data, "chelsea.png"), 256, 224, bicubic), "imagenet")
    cap = {}
    hook = m.blocks[-1].attn.register_forward_hook(lambda mod, i, o: cap.__setitem__("x", i[0]))
    f = features(x)
    hook.remove()
    out = {"logits": head(f)[0].contiguous(), "features": f[0].contiguous()}
    if name.endswith("_reg"):
        # the last block's attention maps: the class token's softmax row over the patches,
        # one per head (the DINO figures), recomputed from the block's attention input
        a, xin = m.blocks[-1].attn, cap["x"]
        b, n, c = xin.shape
        qkv = a.qkv(xin).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        att = ((qkv[0] * a.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
        p = m.num_prefix_tokens
        g = round((n - p) ** 0.5)
        out["attention"] = att[0, :, 0, p:].reshape(a.num_heads, g, g).contiguous()
    # (the smaller inputs bilinear, as for every family's)
    x112 = to_input(crop_u8(os.path.join(data, "chelsea.png"), 128, 112), "imagenet")
    out["logits_112"] = head(features(x112))[0].contiguous()
    if grad_class is not None:
        xg = to_input(crop_u8(os.path.join(data, "chelsea.png"), *grad_size), "imagenet")
        with torch.enable_grad():
            xg.requires_grad_(True)
            head(features(xg))[0, grad_class].backward()
        out["grad"] = xg.grad[0].contiguous()
        out["grad_input_size"] = torch.tensor(list(grad_size), dtype=torch.int64)
    return out


# timm ViTs in the zoo: whisker's name → timm's architecture (its keys mapped to torchvision's)
TIMM_VIT = {"vit_base_patch16_224.augreg2_in21k_ft_in1k": "vit_base_patch16_224"}


def tv_vit_key(k):
    """timm's ViT key → torchvision's (whisker's `vit::timm_key`)."""
    import re
    top = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding"}
    if k in top:
        return top[k]
    for a, b in (("patch_embed.proj.", "conv_proj."), ("norm.", "encoder.ln."),
                 ("head.", "heads.head.")):
        if k.startswith(a):
            return b + k[len(a):]
    i, leaf = re.match(r"blocks\.(\d+)\.(.*)", k).groups()
    leaf = {"attn.qkv.weight": "self_attention.in_proj_weight",
            "attn.qkv.bias": "self_attention.in_proj_bias"}.get(leaf, leaf)
    for a, b in (("norm1.", "ln_1."), ("norm2.", "ln_2."), ("attn.proj.", "self_attention.out_proj."),
                 ("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.3.")):
        if leaf.startswith(a):
            leaf = b + leaf[len(a):]
    return f"encoder.layers.encoder_layer_{i}.{leaf}"


def run_timm_vit(name, data):
    """timm's model with the formula weights of whisker's (torchvision) key names, its
    weights' transform (bicubic resize 248, crop 224, mean/std 0.5)."""
    import timm
    m = timm.create_model(name, pretrained=False, dynamic_img_size=True).eval()
    m.load_state_dict({k: torch.from_numpy(formula(tv_vit_key(k), tuple(v.shape)))
                       for k, v in m.state_dict().items()}, strict=True)
    cfg = m.pretrained_cfg
    resize = math.floor(cfg["input_size"][-1] / cfg["crop_pct"])
    norm = (cfg["mean"], cfg["std"])
    bicubic = T.InterpolationMode.BICUBIC
    x = to_input(crop_u8(os.path.join(data, "chelsea.png"), resize, 224, bicubic), norm)
    f = m.forward_head(m.forward_features(x), pre_logits=True)
    out = {"logits": m.head(f)[0].contiguous(), "features": f[0].contiguous()}
    x112 = to_input(crop_u8(os.path.join(data, "chelsea.png"), 128, 112), norm)
    out["logits_112"] = m(x112)[0].contiguous()
    return out


def run_lite_formula(name, data):
    width, depth, size, resize = LITE[name]
    m = EfficientNetLite(width, depth).eval()
    fill_formula(m)
    x = to_input(crop_u8(os.path.join(data, "chelsea.png"), resize, size), "tf")
    f, logits = m(x)
    return {"logits": logits[0].contiguous(), "features": f[0].contiguous(),
            "params": torch.tensor([sum(p.numel() for p in m.parameters())], dtype=torch.int64)}


def run_lite0(data, weights):
    m = EfficientNetLite(1.0, 1.0).eval()
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    m.load_state_dict(sd, strict=True)
    out = {}
    for tag, img in (("chelsea", "chelsea.png"), ("rocket", "rocket.jpg")):
        x = to_input(crop_u8(os.path.join(data, img), 256, 224), "tf")
        taps = []
        f, logits = m(x, taps)
        out[f"{tag}.logits"] = logits[0].contiguous()
        out[f"{tag}.features"] = f[0].contiguous()
        if tag == "chelsea":
            for name, t in taps:
                a = t[0]
                out[f"{tag}.act.{name}.channel_mean"] = a.mean((1, 2)).contiguous()
                flat = a.flatten()
                stride = max(1, flat.numel() // 2048)
                out[f"{tag}.act.{name}.sample"] = flat[::stride][:2048].contiguous()
            with torch.enable_grad():
                x.requires_grad_(True)
                m(x)[1][0, 281].backward()
            out[f"{tag}.grad281"] = x.grad[0].contiguous()
    return out


# the backbones whose input gradient is checked (one per family where the family has new ops)
GRAD = ("resnet18", "mobilenet_v2", "convnext_tiny", "efficientnet_v2_s", "regnet_y_400mf",
        "vit_b_16", "dinov2_vits14", "dinov2_vits14_reg")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".testdata")
    ap.add_argument("--out", default="crates/whisker/tests/golden")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    manifest = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "pillow": Image.__version__, "backbones": {}}
    with open(os.path.join(args.out, "preprocess.json"), "w") as f:
        json.dump(preprocess_goldens(args.data), f, indent=1)
    todo = args.only or (["efficientnet_lite0"] + TV + [f"efficientnet_lite{i}" for i in range(1, 5)]
                         + list(DINOV2) + list(TIMM_VIT))
    for name in todo:
        if name in LITE and name != "efficientnet_lite0":
            out = run_lite_formula(name, args.data)
            logits = out["logits"]
        elif name == "efficientnet_lite0":
            out = run_lite0(args.data, os.path.join(args.data, "efficientnet-lite0-57934424.pth"))
            logits = out["chelsea.logits"]
        elif name in TIMM_VIT:
            out = run_timm_vit(name, args.data)
            logits = out["logits"]
        elif name in DINOV2:
            out = run_dinov2(name, args.data, grad_class=281 if name in GRAD else None)
            logits = out["logits"]
        else:
            out = run_tv(name, args.data, grad_class=281 if name in GRAD else None)
            logits = out["logits"]
        top = torch.topk(logits, 5)
        manifest["backbones"][name] = {
            "top5": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
            "tensors": {k: list(v.shape) for k, v in out.items() if not k.startswith("bn.")},
        }
        save_file({k: v.detach().contiguous() for k, v in out.items()},
                  os.path.join(args.out, f"{name}.safetensors"))
        print(name, manifest["backbones"][name]["top5"], flush=True)
    path = os.path.join(args.out, "manifest.json")
    if args.only and os.path.exists(path):
        old = json.load(open(path))
        old["backbones"].update(manifest["backbones"])
        manifest["backbones"] = old["backbones"]
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
