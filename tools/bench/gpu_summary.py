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
    # shown, not verdicts: TF32 is ~1e-3 by design, bf16 / f16 coarser still
    for prec in ("tf32", "bf16", "f16"):
        c = check(p, out, "ref-classify.json", "classify-" + prec, LOGIT_TOL, judge_logits)
        if c["timing"]:
            checks["logits_" + prec] = c
    for prec in ("bf16", "f16"):
        c = check(p, out, "ref-train.json", "train-" + prec, LOSS_TOL, judge_finetune)
        if c["timing"]:
            checks["finetune_" + prec] = c
    wgpu = check(p, out, "ref-classify.json", "classify-wgpu", LOGIT_TOL, judge_logits)
    if wgpu["timing"]:
        checks["logits_wgpu"] = wgpu
    checks["finetune"] = check(p, out, "ref-train.json", "train-gpu", LOSS_TOL, judge_finetune)
    checks["cam"] = check(p, out, "ref-cam.json", "cam-gpu", LOGIT_TOL, judge_cam)
    shown = {"logits_tf32", "logits_bf16", "logits_f16", "finetune_bf16", "finetune_f16"}
    ok = all(c["pass"] for k, c in checks.items() if k not in shown)

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
    # whisker's precision modes and PyTorch's counterparts, side by side where measured
    pairs = [("fp32", "fp32", "PyTorch fp32"), ("tf32", "default", "PyTorch default (TF32 convs)"),
             ("bf16", "bf16", "PyTorch autocast bf16"), ("f16", "f16", "PyTorch autocast f16")]
    wv = {(r.get("precision", "fp32"), r["model"], r["kind"], r["batch"]): r for r in wh["results"]}
    present = {k[0] for k in wv}
    pairs = [p for p in pairs if p[0] in present]
    head = "| model | step | batch |" + "".join(f" whisker {w} | {t} | ratio |" for w, _, t in pairs)
    lines.append(head)
    lines.append("|---|---|---:|" + "---:|---:|---:|" * len(pairs))
    keys = []
    for r in wh["results"]:
        k = (r["model"], r["kind"], r["batch"])
        if k not in keys:
            keys.append(k)

    def ips(r):
        return r and r["images_per_s"]

    def num(r):
        return f"{r['images_per_s']:.1f}" if r else "–"

    def ratio(a, b):
        return f"{a['images_per_s'] / b['images_per_s']:.2f}×" if a and b else "–"
    for key in keys:
        row = {"model": key[0], "kind": key[1], "batch": key[2]}
        cells = ""
        for w, t, _ in pairs:
            wr, tr = wv.get((w,) + key), tv.get((t,) + key)
            row[f"whisker_{w}"], row[f"torch_{t}"] = ips(wr), ips(tr)
            cells += f" {num(wr)} | {num(tr)} | {ratio(wr, tr)} |"
        report["bench"].append(row)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} |" + cells)
    if not wh["results"]:
        lines.append("| (whisker bench gave no result: see bench-whisker-*.err) |||||||")
    lc, ft = report["checks"]["logits"], report["checks"]["finetune"]
    lines.append("")
    lines.append(f"Logits parity (real Lite0, {lc.get('images', 0)} photos × 1000): max |Δ| = "
                 f"{lc.get('max_abs_diff')} (≤ {LOGIT_TOL}): {'pass' if lc['pass'] else 'FAIL'}")
    lines.append(f"Fine-tune, 3 steps (every layer trainable, AdamW): training loss max relative Δ = "
                 f"{ft.get('max_rel')} (≤ {LOSS_TOL}): {'pass' if ft['pass'] else 'FAIL'}; "
                 f"validation loss {ft.get('max_rel_val')}")
    for prec in ("tf32", "bf16", "f16"):
        lt = report["checks"].get("logits_" + prec)
        if lt:
            lines.append(f"Logits with --precision {prec} (shown, not a verdict): max |Δ| = "
                         f"{lt.get('max_abs_diff')}, top-1 the same: {lt.get('top1_same')}")
    for prec in ("bf16", "f16"):
        fp = report["checks"].get("finetune_" + prec)
        if fp:
            lines.append(f"Fine-tune 3 steps with --precision {prec} (shown): training loss max "
                         f"relative Δ = {fp.get('max_rel')}, test accuracy "
                         f"{fp.get('test_accuracy')}")
    cold, warm = (load(os.path.join(out, n + ".rc")) for n in ("classify-cold", "classify-gpu"))
    if cold:
        report["timing"]["autotune_cache"] = {"cold": cold, "warm": warm}
        lines.append(f"classify of 3 photos with an empty autotune cache: {(cold or {}).get('ms')} ms; "
                     f"again, the cache on disk: {(warm or {}).get('ms')} ms")
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
