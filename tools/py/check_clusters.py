"""The Ray Data and Spark recipes (examples/) on local clusters against `whisker extract`
(run by tools/test.sh): on ~300 real images and a corrupt file, a 2-worker Ray cluster and a
Spark local[2,4] master give the CLI's paths, labels and embeddings (≤ 1e-6) and report the
corrupt file; with a worker killed on its first batch (once) each job still completes with the
same output; 1 shard and 7 shards give the same table.

usage: python check_clusters.py WHISKER_BINARY TESTDATA_DIR
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.dataset as pds

W, TESTDATA = sys.argv[1], sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS = os.path.join(TESTDATA, "efficientnet-lite0-57934424.pth")


def sh(args, env=None, what=""):
    try:
        r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    except subprocess.TimeoutExpired as e:
        sys.exit(f"check_clusters.py: {what or args[0]} did not finish in 600 s:\n{(e.stderr or b'')[-6000:]}")
    if r.returncode != 0:
        sys.exit(f"check_clusters.py: {what or args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def table(folder):
    t = pds.dataset(folder, format="parquet").to_table().sort_by("path")
    emb = {}
    for p, e in zip(t["path"].to_pylist(), t["embedding"].to_pylist()):
        emb[p] = None if e is None else np.asarray(e, np.float32)
    labels = dict(zip(t["path"].to_pylist(), t["label"].to_pylist())) if "label" in t.column_names else None
    errors = dict(zip(t["path"].to_pylist(), t["error"].to_pylist()))
    return emb, labels, errors


def same(name, got, want):
    ge, gl, gerr = got
    we, wl, werr = want
    assert sorted(ge) == sorted(we), f"{name}: other paths: {sorted(set(ge) ^ set(we))[:5]}"
    assert gl == wl, f"{name}: other labels"
    worst = 0.0
    for p, w in we.items():
        g = ge[p]
        if w is None:
            assert g is None and gerr[p] and werr[p], f"{name}: {p} should have failed"
        else:
            assert g is not None and gerr[p] is None, f"{name}: {p} failed: {gerr[p]}"
            worst = max(worst, float(np.abs(g - w).max()))
    assert worst <= 1e-6, f"{name}: max |Δ| {worst}"
    return worst


tmp = tempfile.mkdtemp()
try:
    env = {"WHISKER_HOME": os.path.join(tmp, "home")}
    data = os.path.join(tmp, "digits")
    sh([W, "-q", "data", "digits", data, "--from", os.path.join(TESTDATA, "digits.csv.gz"), "--limit", "300"], env)
    shutil.copy(os.path.join(TESTDATA, "chelsea.png"), os.path.join(data, "3", "chelsea.png"))
    with open(os.path.join(data, "7", "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR truncated")
    n = sum(len(fs) for _, _, fs in os.walk(data))
    assert n >= 300, n

    # the CLI: one process, 1 shard and 7 shards
    ref = os.path.join(tmp, "cli")
    sh([W, "-q", "extract", data, "--out", ref, "--weights", WEIGHTS], env, "whisker extract")
    want = table(ref)
    assert want[0]["7/corrupt.png"] is None and "corrupt.png" in want[2]["7/corrupt.png"]
    seven = os.path.join(tmp, "cli7")
    sh([W, "-q", "extract", data, "--out", seven, "--num-shards", "7", "--weights", WEIGHTS], env)
    same("7 shards", table(seven), want)
    print(f"check_clusters.py: {n} images; the CLI with 1 and 7 shards: the same table")

    recipe_env = {
        **env,
        "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tools", "py", "faults"), os.environ.get("PYTHONPATH", "")]),
        "RAY_DEDUP_LOGS": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    common = [data, "--weights", WEIGHTS]
    for kill in (False, True):
        extra = {"WHISKER_DIE_ONCE": os.path.join(tmp, f"died-ray-{kill}")} if kill else {}
        out = os.path.join(tmp, f"ray-{kill}")
        sh([sys.executable, os.path.join(ROOT, "examples", "ray_extract.py"), *common[:1], out, *common[1:],
            "--workers", "2", "--threads", "1", "--batch-size", "16"], {**recipe_env, **extra}, "ray_extract.py")
        if kill:
            assert os.path.exists(extra["WHISKER_DIE_ONCE"]), "no Ray worker was killed"
        w = same(f"Ray{' (a worker killed)' if kill else ''}", table(out), want)
        print(f"check_clusters.py: Ray, 2 workers{', one killed on its first batch' if kill else ''}: the CLI's table (max |Δ| {w:.1e})")

    java = shutil.which("java")
    if java is None:
        sys.exit("check_clusters.py: Spark needs Java (Debian: apt-get install default-jre-headless)")
    for kill in (False, True):
        extra = {"WHISKER_DIE_ONCE": os.path.join(tmp, f"died-spark-{kill}")} if kill else {}
        out = os.path.join(tmp, f"spark-{kill}")
        sh([sys.executable, os.path.join(ROOT, "examples", "spark_extract.py"), *common[:1], out, *common[1:],
            "--master", "local[2,4]"], {**recipe_env, **extra, "PYSPARK_PYTHON": sys.executable}, "spark_extract.py")
        if kill:
            assert os.path.exists(extra["WHISKER_DIE_ONCE"]), "no Spark worker was killed"
        w = same(f"Spark{' (a worker killed)' if kill else ''}", table(out), want)
        print(f"check_clusters.py: Spark local[2,4]{', a worker killed on its first batch' if kill else ''}: the CLI's table (max |Δ| {w:.1e})")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
