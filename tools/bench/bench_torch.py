#!/usr/bin/env python3
"""PyTorch and ONNX Runtime twins of `cargo run --release --example bench_forward`: eval
forward images/s, same models, batch, input size (each backbone's own) and thread count.
One JSON object per line.

    python tools/bench/bench_torch.py --threads 2 [--batch 16] [--min-seconds 1]
        [--runtime torch|ort] [--onnx-dir DIR] [MODEL...]

`--runtime ort` exports the model with `torch.onnx.export(..., dynamo=False)` (cached in
--onnx-dir) and runs it with ONNX Runtime's CPU provider, `intra_op_num_threads` = --threads.
Needs: torch, torchvision (and onnx, onnxruntime for --runtime ort): tools/bench/setup.sh.
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
       "efficientnet_lite4", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
       "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l", "regnet_y_400mf",
       "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
       "regnet_y_32gf", "vit_b_16", "vit_b_32", "vit_l_16",
       "vit_base_patch16_224.augreg2_in21k_ft_in1k", "dinov2_vits14", "dinov2_vitb14",
       "dinov2_vitl14", "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg"]


def dinov2_classifier(name):
    """timm's DINOv2 at 224 px (its position embeddings for the 16×16 grid, as timm resamples
    them on load) with the ImageNet linear head (`linear_head`) on the class token + mean
    patch token: the network whisker runs, with whisker's parameter names."""
    import timm
    from make_golden import DINOV2
    arch, _ = DINOV2[name]
    m = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)

    class Classifier(type(m)):
        def forward(self, x):
            t = self.forward_features(x)
            f = torch.cat([t[:, 0], t[:, self.num_prefix_tokens:].mean(1)], 1)
            return self.linear_head(f)

    m.__class__ = Classifier
    m.linear_head = torch.nn.Linear(2 * m.embed_dim, 1000)
    return m


def build(name):
    if name.startswith("dinov2_"):
        return dinov2_classifier(name).eval(), 224
    if "." in name:  # timm's
        import timm
        return timm.create_model(name, pretrained=False).eval(), 224
    if name in LITE:
        w, d, size, _ = LITE[name]
        return EfficientNetLite(w, d).eval(), size
    if name.startswith("efficientnet_v2_"):  # the weights' own crop: 384 / 480
        crop = torchvision.models.get_model_weights(name).IMAGENET1K_V1.transforms().crop_size[0]
        return getattr(torchvision.models, name)(weights=None).eval(), crop
    return getattr(torchvision.models, name)(weights=None).eval(), 224


def timed(fn, min_seconds):
    fn()  # warm-up
    t = time.perf_counter()
    iters = 0
    while iters < 2 or time.perf_counter() - t < min_seconds:
        fn()
        iters += 1
    return (time.perf_counter() - t) / iters, iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--runtime", choices=["torch", "ort"], default="torch")
    ap.add_argument("--onnx-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "whisker-bench-onnx"))
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    for name in a.models or ALL:
        m, size = build(name)
        x = torch.rand(a.batch, 3, size, size)
        if a.runtime == "torch":
            with torch.inference_mode():
                secs, iters = timed(lambda: m(x), a.min_seconds)
            extra = {"torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()}
        else:
            import onnxruntime as ort
            os.makedirs(a.onnx_dir, exist_ok=True)
            path = os.path.join(a.onnx_dir, f"{name}-b{a.batch}-{size}.onnx")
            if not os.path.exists(path):
                # nn.MultiheadAttention's eval fast path (one fused op) has no ONNX export:
                # the exported graph is the same attention written out
                torch.backends.mha.set_fastpath_enabled(False)
                torch.onnx.export(m, x, path + ".tmp", dynamo=False, input_names=["x"],
                                  output_names=["logits"], opset_version=17)
                os.replace(path + ".tmp", path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            secs, iters = timed(lambda: sess.run(None, feed), a.min_seconds)
            extra = {"onnxruntime": ort.__version__}
        print(json.dumps({"impl": a.runtime, "model": name, "threads": a.threads, "batch": a.batch,
                          "size": size, "iters": iters, "seconds_per_batch": round(secs, 5),
                          "images_per_s": round(a.batch / secs, 2), **extra}), flush=True)


if __name__ == "__main__":
    main()
