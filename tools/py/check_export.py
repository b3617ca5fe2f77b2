"""The ONNX models `whisker export` writes, run by ONNX Runtime and OpenVINO against whisker.

usage: python tools/py/check_export.py DIR
DIR holds, per backbone, NAME.onnx, NAME.pixels.npy (7 real photos at the input size, in
[0, 1]) and whisker's NAME.logits.npy / NAME.features.npy for them, as the Rust test
`export_onnx` leaves them with WHISKER_EXPORT_DIR=DIR. Each model: onnx.checker (full) and
strict shape inference pass; ONNX Runtime (CPU) and OpenVINO (CPU, f32) at batch 1 and 7
give whisker's logits and features within 1e-5 of their scale. Prints a table; exits 1 on
any failure. Files of a checked model are removed unless --keep.
"""

import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

try:
    import openvino as ov
except ImportError:  # (the check says so; ONNX Runtime alone is still checked)
    ov = None

TOL = 1e-5
# EfficientNetV2 with formula weights and BatchNorm statistics measured on these photos is
# ill-conditioned in float32 (its small-variance channels carry its signal). Measured on the
# 7 photos against PyTorch in float64 (tools/reference/make_golden.py's model, 2026-12-07),
# logits relative to their scale — PyTorch's own float32 / whisker / ONNX Runtime:
#   efficientnet_v2_s 5.7e-6 / 4.5e-6 / 3.8e-6;  _m 1.1e-5 / 7.4e-6 / 7.0e-6;
#   _l 2.8e-5 / 1.5e-5 / 1.3e-5
# so two float32 engines may differ by about the sum (the features, more): every other
# backbone is within 4e-6 in both engines.
TOLERANCES = {"efficientnet_v2_s": 2e-5, "efficientnet_v2_m": 5e-5, "efficientnet_v2_l": 1e-4}


def tolerance(name):
    return next((t for p, t in TOLERANCES.items() if name.startswith(p)), TOL)


def rel(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def run_ort(path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, {"pixels": x})))


def run_ov(core, path, x):
    m = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    r = m(x)
    # (an output port carries every name its tensor had: the graph output's is among them)
    return {n: r[o] for o in m.outputs for n in o.get_names() if n in ("logits", "features")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    core = ov.Core() if ov else None
    models = sorted(glob.glob(os.path.join(a.dir, "*.onnx")))
    if not models:
        sys.exit(f"check_export.py: no .onnx files in {a.dir}")
    failed = []
    print(f"{'backbone':<44} {'MB':>7} {'engine':<12} {'batch':>5} {'logits':>9} {'features':>9}")
    for path in models:
        name = os.path.basename(path)[: -len(".onnx")]
        stem = os.path.join(a.dir, name)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
        meta = {q.key: q.value for q in m.metadata_props}
        assert meta["whisker.backbone"] == name, meta
        del m
        x = np.load(stem + ".pixels.npy")
        want = {"features": np.load(stem + ".features.npy")}
        if os.path.exists(stem + ".logits.npy"):
            want["logits"] = np.load(stem + ".logits.npy")
        engines = [("onnxruntime", lambda x: run_ort(path, x))]
        if core is not None:
            engines.append(("openvino", lambda x: run_ov(core, path, x)))
        for engine, run in engines:
            for batch in (1, 7):
                got = run(np.ascontiguousarray(x[:batch]))
                errs = {k: rel(got[k], w[:batch]) for k, w in want.items()}
                cells = [f"{errs[k]:.1e}" if k in errs else "-" for k in ("logits", "features")]
                mb = os.path.getsize(path) / 1e6
                print(f"{name:<44} {mb:7.1f} {engine:<12} {batch:>5} {cells[0]:>9} {cells[1]:>9}", flush=True)
                if set(got) != set(want) or any(e > tolerance(name) for e in errs.values()):
                    failed.append(f"{name} {engine} batch {batch}: {errs} (outputs {sorted(got)})")
        if not a.keep:
            for f in glob.glob(stem + ".*"):
                os.remove(f)
    if ov is None:
        print("check_export.py: openvino is not installed: ONNX Runtime only")
    if failed:
        print("check_export.py: FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"check_export.py: {len(models)} models: ONNX Runtime"
          f"{' and OpenVINO' if ov else ''} give whisker's logits and features (≤ {TOL:g} of their scale; EfficientNetV2 as measured above)")


if __name__ == "__main__":
    main()
