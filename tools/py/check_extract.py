"""`whisker extract`'s files read by the Python tools people use (run by tools/test.sh):
pyarrow reads the shards one by one, as a dataset (the folder: completion records skipped) and
merged; NumPy loads the .npy shards; a path list written by pyarrow is an input. Every reading
gives the same rows and the same float32 embeddings.

usage: python check_extract.py WHISKER_BINARY TESTDATA_DIR
(WHISKER_HOME must hold efficientnet_lite0's weights.)
"""

import csv
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

W, TESTDATA = sys.argv[1], sys.argv[2]


def extract(*args):
    r = subprocess.run([W, "-q", "extract", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"whisker extract {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def embeddings(table):
    """Rows with an embedding → [n, dim] float32."""
    ok = table.filter(pa.compute.is_valid(table["embedding"]))
    return np.stack(ok["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32), ok


tmp = tempfile.mkdtemp()
try:
    data = os.path.join(tmp, "photos")
    for cls, files in {"cat": ["chelsea.png", "coffee.png"], "other": ["astronaut.png", "rocket.jpg"]}.items():
        os.makedirs(os.path.join(data, cls))
        for f in files:
            shutil.copy(os.path.join(TESTDATA, f), os.path.join(data, cls, f))
    with open(os.path.join(data, "other", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")

    one = os.path.join(tmp, "one")
    extract(data, "--out", one)
    t = pq.read_table(os.path.join(one, "part-00000.parquet"))
    assert t.schema.field("path").type == pa.string()
    assert t.schema.field("label").type == pa.string()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 1280), t.schema
    assert t.schema.field("error").type == pa.string()
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta["whisker.backbone"] == "efficientnet_lite0", meta
    assert meta["whisker.layer"] == "features" and meta["whisker.dim"] == "1280", meta
    assert meta["whisker.weights_sha256"].startswith("579344248a93"), meta
    assert t.column("path").to_pylist() == [
        "cat/chelsea.png", "cat/coffee.png", "other/astronaut.png", "other/broken.jpg", "other/rocket.jpg"
    ], t.column("path")
    assert t.column("label").to_pylist() == ["cat", "cat", "other", "other", "other"]
    errors = t.column("error").to_pylist()
    assert errors[3] is not None and "broken.jpg" in errors[3], errors
    assert [e is None for e in errors] == [True, True, True, False, True]
    e1, ok1 = embeddings(t)
    assert e1.shape == (4, 1280) and e1.dtype == np.float32 and np.isfinite(e1).all()

    # three shards: the folder read as a dataset (records skipped), and the merged file
    three = os.path.join(tmp, "three")
    merged = os.path.join(tmp, "merged.parquet")
    extract(data, "--out", three, "--num-shards", "3", "--merge", merged)
    for table in (pds.dataset(three, format="parquet").to_table(), pq.read_table(merged)):
        table = table.sort_by("path")
        assert table.column("path").to_pylist() == t.column("path").to_pylist()
        assert table.column("error").to_pylist() == errors
        e3, _ = embeddings(table)
        assert np.abs(e3 - e1).max() <= 1e-6, np.abs(e3 - e1).max()

    # NumPy shards and their index
    npy = os.path.join(tmp, "npy")
    extract(data, "--out", npy, "--format", "npy")
    arr = np.load(os.path.join(npy, "part-00000.npy"))
    assert arr.shape == (4, 1280) and arr.dtype == np.float32, (arr.shape, arr.dtype)
    with open(os.path.join(npy, "part-00000.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == t.column("path").to_pylist()
    for r, want in zip(rows, t.column("embedding").to_pylist()):
        if r["row"]:
            assert np.array_equal(arr[int(r["row"])], np.asarray(want, dtype=np.float32))
        else:
            assert want is None and "broken.jpg" in r["error"]

    # a list of paths written by pyarrow (large strings, absolute paths) is an input
    lst = os.path.join(tmp, "list.parquet")
    paths = [os.path.join(data, p) for p in t.column("path").to_pylist()]
    pq.write_table(pa.table({"path": pa.array(paths, pa.large_string()), "id": list(range(len(paths)))}), lst)
    fromlist = os.path.join(tmp, "fromlist")
    extract(lst, "--out", fromlist)
    tl = pq.read_table(os.path.join(fromlist, "part-00000.parquet"))
    assert tl.column("path").to_pylist() == sorted(paths)
    el, _ = embeddings(tl)
    assert np.abs(el - e1).max() <= 1e-6
    print("check_extract.py: pyarrow and NumPy read whisker extract's files: ok")
finally:
    shutil.rmtree(tmp)
