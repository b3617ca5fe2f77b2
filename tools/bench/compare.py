#!/usr/bin/env python3
"""Forward throughput: whisker's CPU engine against PyTorch eager, PyTorch traced + frozen
(`jit`), ONNX Runtime and OpenVINO (and, with --burn, whisker's burn path), same machine,
same run, alternating A/B/C… then …C/B/A so that host drift hits every side alike. Prints
Markdown tables (best of --rounds runs per side) with the CPU model, its SIMD flags, the
versions and the ISA each side used, and whisker against the fastest other engine; --json
FILE keeps every measurement.

    tools/bench/compare.py [--threads 2,1] [--batch 16,1] [--rounds 2] [--min-seconds 1]
        [--burn] [--isa avx2] [--avx2] [--no-ort] [--no-jit] [--no-ov] [--json out.json] [MODEL...]

Whisker's side is `cargo run --release --example bench_forward`; the other sides are
`tools/bench/bench_torch.py` run with PYTHON (default: the venv of tools/bench/setup.sh).
For the AVX2-only ratio, `--avx2`: whisker's AVX2 path against PyTorch with
`ATEN_CPU_CAPABILITY=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN, which runs PyTorch's
convolutions, ignores the first); ONNX Runtime and OpenVINO have no such switch, so `--avx2`
leaves them out.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg19",
       "vgg16_bn", "vgg19_bn", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
       "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
       "efficientnet_lite4", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
       "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l", "regnet_y_400mf",
       "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
       "regnet_y_32gf", "vit_b_16", "vit_b_32", "vit_l_16"]


def cpu():
    model, flags = "?", []
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            have = line.split(":", 1)[1].split()
            flags = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                                 "amx_tile", "amx_bf16") if f in have]
            break
    return model, flags


def run(cmd, env=None):
    """Run one measurement; its last stdout line is a JSON object."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2")
    ap.add_argument("--batch", default="16,1")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--burn", action="store_true", help="also whisker's burn path")
    ap.add_argument("--isa", help="whisker's engine ISA (avx512, avx2, portable)")
    ap.add_argument("--avx2", action="store_true",
                    help="every side limited to AVX2 (whisker --isa avx2; PyTorch and oneDNN by env)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-jit", action="store_true", help="leave out PyTorch traced + frozen")
    ap.add_argument("--no-ov", action="store_true", help="leave out OpenVINO")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    torch_env = None
    if a.avx2:
        a.isa, a.no_ort, a.no_ov = "avx2", True, True
        torch_env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    python = os.environ.get("PYTHON") or subprocess.run(
        [os.path.join(ROOT, "tools", "bench", "setup.sh")], capture_output=True, text=True,
        check=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "whisker", "--example", "bench_forward"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "release", "examples", "bench_forward")
    models = a.models or ALL
    others = ["torch"] + ([] if a.no_jit else ["jit"]) + ([] if a.no_ort else ["ort"]) \
        + ([] if a.no_ov else ["ov"])
    sides = ["whisker"] + (["burn"] if a.burn else []) + others
    label = {"torch": "PyTorch", "jit": "PyTorch jit", "ort": "ONNX Runtime", "ov": "OpenVINO"}
    results = []
    model, flags = cpu()
    for threads in [int(t) for t in a.threads.split(",")]:
        for batch in [int(b) for b in a.batch.split(",")]:
            best = {}
            for m in models:
                for r in range(a.rounds):
                    order = sides if r % 2 == 0 else list(reversed(sides))
                    for side in order:
                        common = ["--threads", str(threads), "--batch", str(batch),
                                  "--min-seconds", str(a.min_seconds)]
                        if side in ("whisker", "burn"):
                            cmd = [exe] + common + (["--engine", "burn"] if side == "burn" else []) \
                                + (["--isa", a.isa] if a.isa and side == "whisker" else []) + [m]
                        else:
                            cmd = [python, os.path.join(ROOT, "tools", "bench", "bench_torch.py")] + common \
                                + ["--runtime", side, m]
                        res = run(cmd, env=None if side in ("whisker", "burn") else torch_env)
                        res["side"], res["round"] = side, r
                        results.append(res)
                        key = (m, side)
                        if key not in best or res["images_per_s"] > best[key]["images_per_s"]:
                            best[key] = res
                    print(f"  {m} t{threads} b{batch} round {r}: " + ", ".join(
                        f"{s} {best[(m, s)]['images_per_s']}" for s in sides), file=sys.stderr)
            def first(side, key):
                return next((v.get(key) for (mm, s), v in best.items() if s == side), "?")
            print(f"\n### Eval forward, batch {batch}, {threads} thread(s), each backbone at its own input size\n")
            versions = [f"PyTorch {first('torch', 'torch')} (CPU capability {first('torch', 'isa')}"
                        + (", oneDNN limited to AVX2)" if a.avx2 else ")")]
            if "ort" in others:
                versions.append(f"ONNX Runtime {first('ort', 'onnxruntime')} (CPU EP)")
            if "ov" in others:
                versions.append(f"OpenVINO {first('ov', 'openvino')} (CPU, f32; latency hint, or at batch > 1 "
                                "the throughput hint with 2 streams when faster: the mode is in --json)")
            print(f"CPU: {model}; flags: {' '.join(flags)}; whisker engine ISA: {first('whisker', 'isa')}; "
                  + "; ".join(versions) + f". Best of {a.rounds} alternated runs, images/s.\n")
            head = "| backbone | size | whisker |" + (" whisker (burn) |" if a.burn else "") \
                + "".join(f" {label[o]} |" for o in others) + " whisker / PyTorch |" \
                + (" whisker / fastest other |" if len(others) > 1 else "")
            print(head)
            print("|" + "---|" * (head.count("|") - 1))
            for m in models:
                w = best[(m, "whisker")]
                row = f"| {m} | {w['size']} | {w['images_per_s']:.1f} |"
                if a.burn:
                    row += f" {best[(m, 'burn')]['images_per_s']:.1f} |"
                for o in others:
                    row += f" {best[(m, o)]['images_per_s']:.1f} |"
                row += f" {w['images_per_s'] / best[(m, 'torch')]['images_per_s']:.2f}× |"
                if len(others) > 1:
                    o = max(others, key=lambda o: best[(m, o)]["images_per_s"])
                    row += f" {w['images_per_s'] / best[(m, o)]['images_per_s']:.2f}× ({label[o]}) |"
                print(row, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": model, "flags": flags, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
