"""`whisker export` of trained runs, run by ONNX Runtime and OpenVINO against whisker.

usage: python tools/py/check_export_runs.py WHISKER_BINARY TESTDATA_DIR

On 300 real digit images with EfficientNet-Lite0's real weights: a linear probe, an MLP head
and a fine-tuned run (backbone weights changed) are each exported; ONNX Runtime's and
OpenVINO's logits and features at batch 1 and 7 equal whisker's (the Python package's, on
the same crops) within 1e-5 of their scale, and the Pillow preprocessing of
examples/onnx_classify.py gives whisker's own logits for the image files. Then the README's
ONNX Runtime snippet (examples/onnx_classify.py) on a photo prints `whisker classify`'s
top 5 with the same probabilities.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import onnx_classify  # noqa: E402

import whisker  # noqa: E402

try:
    import openvino as ov
except ImportError:
    ov = None

TOL = 1e-5


def rel(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def engines(path):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    yield "onnxruntime", lambda x: dict(zip([o.name for o in s.get_outputs()], s.run(None, {"pixels": x})))
    if ov is not None:
        m = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(x):
            r = m(x)
            return {n: r[o] for o in m.outputs for n in o.get_names() if n in ("logits", "features")}

        yield "openvino", run


def main():
    w, testdata = sys.argv[1:3]
    tmp = tempfile.mkdtemp()
    failed = []
    try:
        env = {**os.environ, "WHISKER_HOME": os.path.join(tmp, "home")}

        def sh(*args):
            return subprocess.run([w, "-q", *args], check=True, env=env, capture_output=True, text=True).stdout

        weights = os.path.join(testdata, "efficientnet-lite0-57934424.pth")
        sh("weights", "fetch", "efficientnet_lite0", "--from", weights)
        digits = os.path.join(tmp, "digits")
        sh("data", "digits", digits, "--from", os.path.join(testdata, "digits.csv.gz"), "--limit", "300")
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(digits) for f in fs if f.endswith(".png"))[::37][:7]
        runs = {
            "probe": [],
            "mlp head": ["--mode", "head", "--epochs", "3"],
            "fine-tuned": ["--mode", "finetune", "--epochs", "1", "--freeze-epochs", "0", "--no-augment"],
        }
        print(f"{'run':<12} {'engine':<12} {'batch':>5} {'logits':>9} {'features':>9}")
        for kind, flags in runs.items():
            run = os.path.join(tmp, kind.replace(" ", "_"))
            sh("train", digits, "--out", run, *flags)
            out = os.path.join(tmp, kind.replace(" ", "_") + ".onnx")
            info = json.loads(sh("export", run, "--out", out, "--json"))
            assert info["outputs"] == ["logits", "features"] and info["classes"] == 10, info
            m = onnx.load(out)
            onnx.checker.check_model(m, full_check=True)
            meta = {p.key: p.value for p in m.metadata_props}
            assert json.loads(meta["whisker.classes"]) == [str(i) for i in range(10)], meta["whisker.classes"]
            assert ("whisker.finetuned_model_sha256" in meta) == (kind == "fine-tuned"), meta.keys()
            pre = json.loads(meta["whisker.preprocessing"])
            model = whisker.Model.load(run)
            x = np.concatenate([onnx_classify.preprocess(f, pre) for f in files])
            crops = np.ascontiguousarray((x * 255).round().astype(np.uint8).transpose(0, 2, 3, 1))
            want = {"logits": model.logits(crops, cropped=True), "features": model.extract(crops, cropped=True)}
            # the snippet's Pillow preprocessing is whisker's own (the files, through whisker)
            e = rel(model.logits(files), want["logits"])
            if e > 1e-6:
                failed.append(f"{kind}: Pillow preprocessing vs whisker's: {e:.1e}")
            for engine, run_model in engines(out):
                for batch in (1, 7):
                    got = run_model(np.ascontiguousarray(x[:batch]))
                    errs = {k: rel(got[k], v[:batch]) for k, v in want.items()}
                    print(f"{kind:<12} {engine:<12} {batch:>5} {errs['logits']:9.1e} {errs['features']:9.1e}", flush=True)
                    if any(v > TOL for v in errs.values()):
                        failed.append(f"{kind} {engine} batch {batch}: {errs}")
        # the README's snippet against `whisker classify` (the zoo model, ImageNet classes)
        zoo = os.path.join(tmp, "lite0.onnx")
        sh("export", "efficientnet_lite0", "--out", zoo)
        photo = os.path.join(testdata, "chelsea.png")
        snippet = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "onnx_classify.py"), zoo, photo],
                                 check=True, capture_output=True, text=True).stdout.split("\n")[:5]
        top = json.loads(sh("classify", photo, "--json", "--top", "5"))["results"][0]["top"]
        for line, t in zip(snippet, top):
            p, label = line.split(" ", 1)
            if label != t["label"] or abs(float(p) - t["prob"]) > 1e-4:
                failed.append(f"onnx_classify.py: {line!r} vs whisker classify {t['label']} {t['prob']:.4f}")
        print(f"onnx_classify.py {photo}: " + "; ".join(snippet))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print("check_export_runs.py: FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print("check_export_runs.py: probe, MLP head and fine-tuned runs: ONNX Runtime"
          f"{' and OpenVINO' if ov else ''} give whisker's logits and features; the snippet gives whisker classify's top 5")


if __name__ == "__main__":
    main()
