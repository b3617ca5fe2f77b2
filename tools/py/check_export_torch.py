"""`whisker export --format torch`, rebuilt in PyTorch (torchvision, timm) against whisker.

usage: python tools/py/check_export_torch.py zoo DIR PHOTO
       python tools/py/check_export_torch.py runs WHISKER_BINARY TESTDATA_DIR

zoo: DIR holds, per backbone, NAME.safetensors and the rebuild code `whisker export` printed
for it (NAME.torch.py), NAME.pixels.npy (7 real photos, in [0, 1]) and whisker's
NAME.logits.npy / NAME.features.npy, as the Rust test `export_onnx` leaves them with
WHISKER_EXPORT_DIR=DIR. The code is run as printed (it loads the file strictly and
classifies PHOTO); the model's output on the normalised photos equals whisker's logits (the
features, for a backbone without a classifier) within 1e-5 of their scale, at batch 1 and 7.
The torch files of a checked model are removed unless --keep.

runs: on 300 real digit images with EfficientNet-Lite0's real weights, a linear probe, an
MLP head and a fine-tuned run are exported (.safetensors and .pth), rebuilt by the printed
code, and give whisker's logits on the same crops (1e-5 of their scale); the printed code of
the zoo model on a photo prints `whisker classify`'s top class and probability.
"""

import contextlib
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

# the ONNX check's tolerances (EfficientNetV2's from its float32 conditioning, measured in
# float64: see there) and error measure
from check_export import TOL, rel, tolerance  # noqa: E402


def rebuild(code, photo):
    """Run the printed code (in a folder where its `photo.jpg` is `photo`); its namespace."""
    ns = {"__name__": "rebuild"}
    here = os.getcwd()
    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(photo, os.path.join(tmp, "photo.jpg"))
        os.chdir(tmp)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "rebuild", "exec"), ns)
        ns["printed"] = out.getvalue()
    finally:
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)
    return ns


def run(ns, x):
    """The rebuilt model on pixels in [0, 1] (N×3×H×W), normalised as the code does."""
    with torch.no_grad():
        return ns["model"](ns["normalize"](torch.from_numpy(np.ascontiguousarray(x)))).numpy()


def zoo(d, keep, photo):
    codes = sorted(glob.glob(os.path.join(d, "*.torch.py")))
    if not codes:
        sys.exit(f"check_export_torch.py: no .torch.py files in {d}")
    failed = []
    print(f"{'backbone':<44} {'MB':>7} {'PyTorch model':<44} {'batch':>5} {'output':>9} {'error':>9}")
    for path in codes:
        name = os.path.basename(path)[: -len(".torch.py")]
        stem = os.path.join(d, name)
        code = open(path).read()
        ns = rebuild(code, photo)
        want = np.load(stem + ".logits.npy") if os.path.exists(stem + ".logits.npy") else np.load(stem + ".features.npy")
        kind = "logits" if os.path.exists(stem + ".logits.npy") else "features"
        x = np.load(stem + ".pixels.npy")
        model = type(ns["model"]).__name__
        mb = os.path.getsize(stem + ".safetensors") / 1e6
        for batch in (1, 7):
            got = run(ns, x[:batch])
            e = rel(got, want[:batch]) if got.shape == want[:batch].shape else float("inf")
            print(f"{name:<44} {mb:7.1f} {model:<44} {batch:>5} {kind:>9} {e:9.1e}", flush=True)
            if e > tolerance(name):
                failed.append(f"{name} batch {batch}: {kind} {e:.1e} (shape {got.shape} vs {want[:batch].shape})")
        if not keep:
            for f in (stem + ".safetensors", path):
                os.remove(f)
    return failed, f"{len(codes)} backbones"


def runs(w, testdata):
    import whisker

    tmp = tempfile.mkdtemp()
    failed = []
    photo = os.path.join(testdata, "chelsea.png")
    try:
        env = {**os.environ, "WHISKER_HOME": os.path.join(tmp, "home")}

        def sh(*args):
            return subprocess.run([w, "-q", *args], check=True, env=env, capture_output=True, text=True).stdout

        sh("weights", "fetch", "efficientnet_lite0", "--from", os.path.join(testdata, "efficientnet-lite0-57934424.pth"))
        digits = os.path.join(tmp, "digits")
        sh("data", "digits", digits, "--from", os.path.join(testdata, "digits.csv.gz"), "--limit", "300")
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(digits) for f in fs if f.endswith(".png"))[::37][:7]
        kinds = {
            "probe": ([], ["safetensors"]),
            "mlp head": (["--mode", "head", "--epochs", "3"], ["pth"]),
            "fine-tuned": (["--mode", "finetune", "--epochs", "1", "--freeze-epochs", "0", "--no-augment"], ["safetensors", "pth"]),
        }
        print(f"{'run':<12} {'file':<24} {'batch':>5} {'logits':>9}")
        for kind, (flags, formats) in kinds.items():
            run_dir = os.path.join(tmp, kind.replace(" ", "_"))
            sh("train", digits, "--out", run_dir, *flags)
            model = whisker.Model.load(run_dir)
            for fmt in formats:
                out = os.path.join(tmp, f"{kind.replace(' ', '_')}.{fmt}")
                info = json.loads(sh("export", run_dir, "--format", "torch", "--out", out, "--json"))
                assert info["outputs"] == ["logits"] and info["classes"] == 10, info
                ns = rebuild(info["python"], files[0])
                # the printed code's classes and its own preprocessing of a file
                assert ns["classes"] == [str(i) for i in range(10)], ns["classes"]
                x = torch.stack([ns["preprocess"](Image.open(f).convert("RGB")) for f in files])
                want = model.logits(files)
                for batch in (1, 7):
                    with torch.no_grad():
                        g = ns["model"](x[:batch]).numpy()
                    e = rel(g, want[:batch])
                    print(f"{kind:<12} {os.path.basename(out):<24} {batch:>5} {e:9.1e}", flush=True)
                    if e > TOL:
                        failed.append(f"{kind} {fmt} batch {batch}: {e:.1e}")
                top = ns["printed"].split()
                if top[0] != str(int(np.argmax(want[0]))):
                    failed.append(f"{kind} {fmt}: the code printed {ns['printed']!r}, whisker's class is {np.argmax(want[0])}")
        # the zoo model's code on a photo against `whisker classify`
        out = os.path.join(tmp, "lite0.safetensors")
        info = json.loads(sh("export", "efficientnet_lite0", "--format", "torch", "--out", out, "--json"))
        printed = rebuild(info["python"], photo)["printed"].strip()
        label, p = printed.rsplit(" ", 1)
        top = json.loads(sh("classify", photo, "--json", "--top", "1"))["results"][0]["top"][0]
        if label != top["label"] or abs(float(p) - top["prob"]) > 1e-5:
            failed.append(f"the printed code: {printed!r} vs whisker classify {top['label']} {top['prob']:.6f}")
        print(f"the printed code of efficientnet_lite0 on {photo}: {printed} (whisker classify: {top['label']} {top['prob']:.6f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failed, "probe, MLP head and fine-tuned runs"


def main():
    torch.set_num_threads(2)
    args = sys.argv[1:]
    keep = "--keep" in args
    args = [a for a in args if a != "--keep"]
    if args[:1] == ["zoo"] and len(args) == 3:
        failed, what = zoo(args[1], keep, args[2])
    elif args[:1] == ["zoo"] and len(args) == 2:
        sys.exit("usage: check_export_torch.py zoo DIR PHOTO")
    elif args[:1] == ["runs"] and len(args) == 3:
        failed, what = runs(args[1], args[2])
    else:
        sys.exit(__doc__)
    if failed:
        print("check_export_torch.py: FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"check_export_torch.py: {what}: the printed PyTorch code (torch {torch.__version__}) gives whisker's outputs (≤ {TOL:g} of their scale)")


if __name__ == "__main__":
    main()
