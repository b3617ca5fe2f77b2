#!/usr/bin/env python3
"""The verdicts and the table of tools/gpu-check.sh: reads PAYLOAD's CPU references and OUT's
GPU results, writes OUT/gpu-check.json and OUT/gpu-check.md, prints the table, and exits 1
when a parity check fails (or did not run).

    python3 tools/bench/gpu_summary.py PAYLOAD OUT
"""
import json
import os
import sys

LOGIT_TOL = 1e-3
LOSS_TOL = 1e-3


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def logits(doc):
    """{image file name: {class index: logit}}"""
    return {os.path.basename(r["image"]): {t["index"]: t["logit"] for t in r["top"]}
            for r in doc["results"]}


def check(p, out, ref_name, stage, tolerance, judge):
    """A parity check: `judge(ref, got)` gives its figures and "pass" when both the CPU's
    reference (PAYLOAD/ref_name) and the GPU's result (OUT/stage.json) exist; else a failure
    naming the missing result. None when the stage was not run at all."""
    timing = load(os.path.join(out, stage + ".rc"))
    ref, got = load(os.path.join(p, ref_name)), load(os.path.join(out, stage + ".json"))
    c = {"tolerance": tolerance, "timing": timing}
    if ref and got:
        c.update(judge(ref, got))
    else:
        c.update({"pass": False, "error": f"no result (see {stage}.err)" if timing else "not run"})
    return c


def judge_logits(ref, got):
    a, b = logits(ref), logits(got)
    diffs = [abs(a[im][k] - b[im][k]) for im in a for k in a[im] if im in b and k in b[im]]
    return {"images": len(b), "logits_compared": len(diffs),
            "max_abs_diff": max(diffs) if diffs else None,
            "top1_same": all(max(a[im], key=a[im].get) == max(b[im], key=b[im].get)
                             for im in a if im in b),
            "pass": len(diffs) == 1000 * len(a) and bool(diffs) and max(diffs) <= LOGIT_TOL}


def judge_finetune(ref, got):
    rows = []
    for r, g in zip(ref["settings"]["fit"]["history"], got["settings"]["fit"]["history"]):
        for key in ("train_loss", "val_loss"):
            rows.append({"epoch": r["epoch"], "what": key, "cpu": r[key], "gpu": g[key],
                         "rel": abs(r[key] - g[key]) / abs(r[key])})
    # the verdict is on the training losses (each step's batch, before its update); the
    # validation losses (3 images, after the update) are shown: AdamW's first steps move by
    # ±lr wherever a gradient is ~0, so their last digits depend on rounding
    max_rel = max(x["rel"] for x in rows if x["what"] == "train_loss")
    return {"losses": rows, "max_rel": max_rel,
            "max_rel_val": max(x["rel"] for x in rows if x["what"] == "val_loss"),
            "test_accuracy": {"cpu": ref["metrics"]["test"]["accuracy"],
                              "gpu": got["metrics"]["test"]["accuracy"]},
            "pass": len(rows) == 6 and max_rel <= LOSS_TOL}


def judge_cam(ref, got):
    a, b = ref["results"][0], got["results"][0]
    diffs = [abs(x - y) for ra, rb in zip(a["map"], b["map"]) for x, y in zip(ra, rb)]
    return {"max_abs_diff": max(diffs), "cells": len(diffs), "peak_cpu": a["peak"],
            "peak_gpu": b["peak"], "prob_cpu": a["prob"], "prob_gpu": b["prob"],
            "pass": max(diffs) <= LOGIT_TOL and a["class"] == b["class"]}


def main():
    p, out = sys.argv[1], sys.argv[2]
    report = {"machine": load(os.path.join(out, "machine.json")), "checks": {}, "bench": [],
              "timing": {"bench-torch": load(os.path.join(out, "bench-torch.rc"))}}
    checks = report["checks"]
    checks["logits"] = check(p, out, "ref-classify.json", "classify-gpu", LOGIT_TOL, judge_logits)
    # shown, not a verdict: TF32 is ~1e-3 by design
    tf32 = check(p, out, "ref-classify.json", "classify-tf32", LOGIT_TOL, judge_logits)
    if tf32["timing"]:
        checks["logits_tf32"] = tf32
    wgpu = check(p, out, "ref-classify.json", "classify-wgpu", LOGIT_TOL, judge_logits)
    if wgpu["timing"]:
        checks["logits_wgpu"] = wgpu
    checks["finetune"] = check(p, out, "ref-train.json", "train-gpu", LOSS_TOL, judge_finetune)
    checks["cam"] = check(p, out, "ref-cam.json", "cam-gpu", LOGIT_TOL, judge_cam)
    ok = all(c["pass"] for k, c in checks.items() if k != "logits_tf32")

    ref, got = load(os.path.join(p, "ref-attack.json")), load(os.path.join(out, "attack-gpu.json"))
    report["checks"]["attack"] = {
        k: {"cpu": ref and ref.get(k), "gpu": got and got.get(k)}
        for k in ("success", "target_prob", "steps_used", "linf_255", "l2")}
    report["checks"]["runs"] = {n: load(os.path.join(out, n + ".rc"))
                                for n in ("attack-gpu", "dream-gpu", "featuremap-gpu")}
    ok &= all((r or {}).get("rc") == 0 for r in report["checks"]["runs"].values())

    wh = {"results": []}
    for name in sorted(os.listdir(out)):
        if name.startswith("bench-whisker-") and name.endswith(".json"):
            report["timing"][name[:-5]] = load(os.path.join(out, name[:-5] + ".rc"))
            with open(os.path.join(out, name)) as f:
                wh["results"] += [json.loads(line) for line in f if line.strip()]
    torch_rows = []
    try:
        with open(os.path.join(out, "bench-torch.json")) as f:
            torch_rows = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    tv = {(r["mode"], r["model"], r["kind"], r["batch"]): r for r in torch_rows}
    lines = []
    gpu = (report["machine"] or {}).get("gpu", "?")
    lines.append(f"GPU: {gpu}; CPU: {(report['machine'] or {}).get('cpu', '?')}")
    lines.append("")
    lines.append("| model | step | batch | whisker fp32 | PyTorch fp32 | ratio | whisker tf32 | PyTorch default (TF32 convs) | ratio |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    wv = {(r.get("precision", "fp32"), r["model"], r["kind"], r["batch"]): r for r in wh["results"]}
    keys = []
    for r in wh["results"]:
        k = (r["model"], r["kind"], r["batch"])
        if k not in keys:
            keys.append(k)
    for key in keys:
        w32, w19 = wv.get(("fp32",) + key), wv.get(("tf32",) + key)
        f32, dft = tv.get(("fp32",) + key), tv.get(("default",) + key)
        ips = lambda r: r and r["images_per_s"]  # noqa: E731
        report["bench"].append({"model": key[0], "kind": key[1], "batch": key[2],
                                "whisker_fp32": ips(w32), "whisker_tf32": ips(w19),
                                "torch_fp32": ips(f32), "torch_default": ips(dft)})

        def num(r):
            return f"{r['images_per_s']:.1f}" if r else "–"

        def ratio(a, b):
            return f"{a['images_per_s'] / b['images_per_s']:.2f}×" if a and b else "–"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {num(w32)} | {num(f32)} | {ratio(w32, f32)} "
                     f"| {num(w19)} | {num(dft)} | {ratio(w19, dft)} |")
    if not wh["results"]:
        lines.append("| (whisker bench gave no result: see bench-whisker-*.err) |||||||")
    lc, ft = report["checks"]["logits"], report["checks"]["finetune"]
    lines.append("")
    lines.append(f"Logits parity (real Lite0, {lc.get('images', 0)} photos × 1000): max |Δ| = "
                 f"{lc.get('max_abs_diff')} (≤ {LOGIT_TOL}): {'pass' if lc['pass'] else 'FAIL'}")
    lines.append(f"Fine-tune, 3 steps (every layer trainable, AdamW): training loss max relative Δ = "
                 f"{ft.get('max_rel')} (≤ {LOSS_TOL}): {'pass' if ft['pass'] else 'FAIL'}; "
                 f"validation loss {ft.get('max_rel_val')}")
    if "logits_tf32" in report["checks"]:
        lt = report["checks"]["logits_tf32"]
        lines.append(f"Logits with --precision tf32 (shown, not a verdict): max |Δ| = {lt.get('max_abs_diff')}")
    if "logits_wgpu" in report["checks"]:
        lw = report["checks"]["logits_wgpu"]
        lines.append(f"Logits parity through wgpu (Vulkan): max |Δ| = {lw.get('max_abs_diff')} "
                     f"(≤ {LOGIT_TOL}): {'pass' if lw['pass'] else 'FAIL'}")
    cc = report["checks"]["cam"]
    lines.append(f"Grad-CAM map (chelsea, Lite0 `head`): max |Δ| = {cc.get('max_abs_diff')} "
                 f"(≤ {LOGIT_TOL}): {'pass' if cc['pass'] else 'FAIL'}")
    at = report["checks"]["attack"]
    lines.append("PGD attack (coffee → tiger cat, ε 4/255, 10 steps): " + ", ".join(
        f"{k} CPU {v['cpu']} / GPU {v['gpu']}" for k, v in at.items()))
    lines.append("Runs on the GPU: " + ", ".join(
        f"{n[:-4]} {'ok' if (r or {}).get('rc') == 0 else 'FAILED'} ({(r or {}).get('ms')} ms)"
        for n, r in report["checks"]["runs"].items()))
    md = "\n".join(lines) + "\n"
    report["pass"] = bool(ok)
    with open(os.path.join(out, "gpu-check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "gpu-check.md"), "w") as f:
        f.write(md)
    print(md)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
