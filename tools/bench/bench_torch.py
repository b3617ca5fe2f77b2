#!/usr/bin/env python3
"""PyTorch, ONNX Runtime and OpenVINO twins of `cargo run --release --example bench_forward`:
eval forward images/s, same models, batch, input size (each backbone's own) and thread count.
One JSON object per line.

    python tools/bench/bench_torch.py --threads 2 [--batch 16] [--min-seconds 1]
        [--runtime torch|jit|ort|ov] [--onnx-dir DIR] [MODEL...]

`--runtime torch`: eager PyTorch (`inference_mode`). `--runtime jit`: traced, frozen and
`optimize_for_inference` (PyTorch's fastest CPU path without another engine). `--runtime
ort` exports the model with `torch.onnx.export(..., dynamo=False)` (cached in --onnx-dir;
the export runs in a child process, so that no timed PyTorch shares a process with it) and
runs it with ONNX Runtime's CPU provider, `intra_op_num_threads` = --threads. `--runtime ov`:
the same ONNX file in OpenVINO's CPU plugin, f32 (`INFERENCE_PRECISION_HINT`), --threads
threads, the latency hint (one stream) and, at batch > 1, also the throughput hint with 2
streams (two requests in flight, each half the batch): the better is reported, with the mode.
Needs: torch, torchvision (onnx, onnxruntime, openvino for ort / ov): tools/bench/setup.sh.
"""
import argparse
import json
import os
import sys
import time
import warnings

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


def onnx_file(a, name, size, batch=None):
    """PyTorch's ONNX export of `name` at batch `batch` (default --batch), made once in a child
    process (an export speeds up that process's eager PyTorch ~1.7×) and cached."""
    import subprocess
    batch = batch or a.batch
    os.makedirs(a.onnx_dir, exist_ok=True)
    path = os.path.join(a.onnx_dir, f"{name}-b{batch}-{size}.onnx")
    if not os.path.exists(path):
        subprocess.run([sys.executable, __file__, "--export", path, "--batch", str(batch), name], check=True)
    return path


def export(path, name, batch):
    m, size = build(name)
    x = torch.rand(batch, 3, size, size)
    # nn.MultiheadAttention's eval fast path (one fused op) has no ONNX export: the exported
    # graph is the same attention written out
    torch.backends.mha.set_fastpath_enabled(False)
    torch.onnx.export(m, x, path + ".tmp", dynamo=False, input_names=["x"], output_names=["logits"],
                      opset_version=17)
    os.replace(path + ".tmp", path)


def compile_half(core, a, name, size, cfg):
    return core.compile_model(onnx_file(a, name, size, a.batch // 2), "CPU", cfg)


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
    ap.add_argument("--runtime", choices=["torch", "jit", "ort", "ov"], default="torch")
    ap.add_argument("--export", help=argparse.SUPPRESS)  # (the child process of onnx_file)
    ap.add_argument("--onnx-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "whisker-bench-onnx"))
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # (TorchScript's deprecation)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if a.export:
        export(a.export, a.models[0], a.batch)
        return
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    for name in a.models or ALL:
        m, size = build(name)
        x = torch.rand(a.batch, 3, size, size)
        if a.runtime == "torch":
            with torch.inference_mode():
                secs, iters = timed(lambda: m(x), a.min_seconds)
            extra = {"torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()}
        elif a.runtime == "jit":
            with torch.no_grad():
                j = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, x)))
                for _ in range(3):  # the profiling executor specialises over the first runs
                    j(x)
                secs, iters = timed(lambda: j(x), a.min_seconds)
            extra = {"torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()}
        elif a.runtime == "ov":
            import numpy as np
            import openvino as ov
            path = onnx_file(a, name, size)
            core = ov.Core()
            feed = x.numpy()
            best = None
            modes = ["latency"] + (["throughput-2"] if a.batch > 1 and a.batch % 2 == 0 else [])
            for mode in modes:
                cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": a.threads}
                if mode == "latency":
                    cfg.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
                    c = core.compile_model(path, "CPU", cfg)
                    req = c.create_infer_request()
                    fn = lambda: req.infer({0: feed})  # noqa: E731
                else:
                    cfg.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2})
                    # two requests in flight, each half the batch (the ONNX file's batch is
                    # fixed: its half-batch twin)
                    half = compile_half(core, a, name, size, cfg)
                    q = ov.AsyncInferQueue(half, 2)
                    halves = [np.ascontiguousarray(feed[: a.batch // 2]), np.ascontiguousarray(feed[a.batch // 2:])]

                    def fn(q=q, halves=halves):
                        for h in halves:
                            q.start_async({0: h})
                        q.wait_all()
                secs, iters = timed(fn, a.min_seconds)
                if best is None or secs < best[0]:
                    best = (secs, iters, mode)
            secs, iters, mode = best
            extra = {"openvino": ov.get_version().split("-")[0], "ov_mode": mode}
        else:
            import onnxruntime as ort
            path = onnx_file(a, name, size)
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
