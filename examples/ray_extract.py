"""Features of a folder of images with Ray Data: whisker models in an actor pool, Parquet out.

    python examples/ray_extract.py photos/ feats/ --workers 4 -b resnet50
    python examples/ray_extract.py photos/ feats/ --model run/ --layer layer3 --pool max
    python examples/ray_extract.py s3://bucket/photos/ s3://bucket/feats/ --address auto

The columns are `whisker extract`'s: path (relative to INPUT), label (when INPUT is a folder per
class), embedding (a fixed-size list of float32; null when the image failed) and error (why,
else null). Each worker holds one model with `--threads` threads (Ray gives it that many CPUs);
an image that cannot be decoded gets its error, it does not fail the job; a worker that dies is
replaced and its batch run again.
"""

import argparse
import os

import numpy as np
import pyarrow as pa
import ray

import whisker


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="a folder of images (a folder per class: labels are written)")
    p.add_argument("out", help="the output folder of Parquet files")
    p.add_argument("-b", "--backbone", default="efficientnet_lite0", help="a zoo backbone (whisker models)")
    p.add_argument("-w", "--weights", help="the backbone's weights file (default: the cache)")
    p.add_argument("--model", help="a trained run instead of a zoo backbone")
    p.add_argument("--layer", help="a layer's output instead of the feature vector")
    p.add_argument("--pool", choices=["avg", "max", "cls", "none"], help="how the layer is pooled (default avg)")
    p.add_argument("--workers", type=int, default=2, help="models running at once (actors), 1 to 4096")
    p.add_argument("--threads", type=int, default=1, help="threads (CPUs) per worker, 1 to 4096")
    p.add_argument("--batch-size", type=int, default=32, help="images per call of a worker, 1 to 4096")
    p.add_argument("--address", help="a Ray cluster to join (default: start one on this machine)")
    a = p.parse_args(argv)
    for name in ("workers", "threads", "batch_size"):
        if not 1 <= getattr(a, name) <= 4096:
            p.error(f"--{name.replace('_', '-')} must be between 1 and 4096")
    if a.pool and not a.layer:
        p.error("--pool applies to a --layer")
    return a


def class_folders(root):
    """Whether `root` holds only class folders (two or more), as `whisker extract` reads it."""
    if "://" in root:
        return False
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    return len(entries) >= 2 and all(e.is_dir() for e in entries)


class Extractor:
    """One whisker model per actor; each call turns a batch of files into output rows."""

    def __init__(self, a, root, labelled):
        if a.model:
            self.model = whisker.Model.load(a.model, threads=a.threads)
        else:
            self.model = whisker.Model.pretrained(a.backbone, weights=a.weights, threads=a.threads)
        self.layer, self.pool = a.layer, a.pool
        self.root, self.labelled = root.rstrip("/"), labelled

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch["path"].to_pylist()
        x, errors = self.model.extract(
            batch["bytes"].to_pylist(), layer=self.layer, pool=self.pool, errors="return"
        )
        rel = [os.path.relpath(p, self.root) if "://" not in p else p[len(self.root) + 1 :] for p in paths]
        for i, e in enumerate(errors):
            if e is not None:
                errors[i] = f"{paths[i]}: {e}"
        valid = pa.array([e is None for e in errors])
        flat = pa.array(np.nan_to_num(x, nan=0.0).reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, x.shape[1], mask=pa.compute.invert(valid))
        cols = {"path": pa.array(rel, pa.string())}
        if self.labelled:
            cols["label"] = pa.array([r.split("/")[0] for r in rel], pa.string())
        cols["embedding"] = emb
        cols["error"] = pa.array(errors, pa.string())
        return pa.table(cols)


def count_files(root):
    """How many files `read_binary_files` will list under a local `root` (None for a URL)."""
    if "://" in root:
        return None
    return sum(len(files) for _, _, files in os.walk(root))


def extract(a, root):
    """The pipeline: read the files → the actor pool of models → Parquet in `a.out`."""
    labelled = class_folders(root)
    # reading bytes and writing Parquet are light: they ask for no CPU (or they would wait for
    # ever for the CPUs the models hold: every CPU given to a worker, as on 2 CPUs × 2
    # workers), and run two at a time (tasks without a CPU are otherwise started by the
    # dozen, each a Python process)
    light = {"num_cpus": 0}
    # one block a model call: the actors are fed evenly from the first batch on (with Ray's
    # default a few large blocks kept one of two workers idle for most of a run)
    n = count_files(root)
    blocks = max(1, -(-n // a.batch_size)) if n else None
    ds = ray.data.read_binary_files(
        root,
        include_paths=True,
        ignore_missing_paths=False,
        ray_remote_args=light,
        concurrency=2,
        override_num_blocks=blocks,
    )
    out = ds.map_batches(
        Extractor,
        fn_constructor_args=(a, root, labelled),
        batch_format="pyarrow",
        batch_size=a.batch_size,
        compute=ray.data.ActorPoolStrategy(size=a.workers),
        num_cpus=a.threads,
        # a worker that dies (killed, out of memory) is replaced and its batch run again
        max_restarts=-1,
        max_task_retries=-1,
    )
    out.write_parquet(a.out, ray_remote_args=light, concurrency=2)


def main(argv=None):
    a = arguments(argv)
    if not a.address:
        # a local cluster keeps its idle Python workers for the next task instead of ending
        # and starting them again (each start costs a CPU-second of imports)
        os.environ.setdefault("RAY_num_workers_soft_limit", str(2 * a.workers + 2))
    ray.init(address=a.address, ignore_reinit_error=True, log_to_driver=False)
    root = a.input if "://" in a.input else os.path.abspath(a.input)
    extract(a, root)
    print(f"ray_extract.py: {a.input} → {a.out}")


if __name__ == "__main__":
    main()
