"""Features of a folder of images with Spark: binaryFile → mapInArrow with whisker → Parquet.

    python examples/spark_extract.py photos/ feats/ -b resnet50
    spark-submit --master spark://host:7077 examples/spark_extract.py hdfs:///photos hdfs:///feats

The columns are `whisker extract`'s: path (relative to INPUT), label (when INPUT is a folder per
class), embedding (float32; Spark has no fixed-size arrays, so it is written as a list) and error
(why the image failed, else null). Each Python worker holds one model (built once, re-used
across tasks) with `--threads` threads; a failed image gets its error and does not fail the
job; a task whose worker dies is run again (spark.task.maxFailures).
"""

import argparse
import os

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import types as T


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="a folder of images (a folder per class: labels are written)")
    p.add_argument("out", help="the output folder of Parquet files")
    p.add_argument("-b", "--backbone", default="efficientnet_lite0", help="a zoo backbone (whisker models)")
    p.add_argument("-w", "--weights", help="the backbone's weights file (default: the cache)")
    p.add_argument("--model", help="a trained run instead of a zoo backbone")
    p.add_argument("--layer", help="a layer's output instead of the feature vector")
    p.add_argument("--pool", choices=["avg", "max", "cls", "none"], help="how the layer is pooled (default avg)")
    p.add_argument("--threads", type=int, default=1, help="threads per Python worker, 1 to 4096")
    p.add_argument("--master", help="the Spark master (default: spark-submit's, else local[*])")
    a = p.parse_args(argv)
    if not 1 <= a.threads <= 4096:
        p.error("--threads must be between 1 and 4096")
    if a.pool and not a.layer:
        p.error("--pool applies to a --layer")
    return a


_MODEL = {}


def model(a):
    """The worker's model (Spark re-uses Python workers: built once per worker)."""
    import whisker

    key = (a.model, a.backbone, a.weights, a.threads)
    if key not in _MODEL:
        _MODEL.clear()
        if a.model:
            _MODEL[key] = whisker.Model.load(a.model, threads=a.threads)
        else:
            _MODEL[key] = whisker.Model.pretrained(a.backbone, weights=a.weights, threads=a.threads)
    return _MODEL[key]


def class_folders(root):
    """Whether `root` holds only class folders (two or more), as `whisker extract` reads it."""
    if "://" in root and not root.startswith("file:"):
        return False
    root = root[len("file:"):] if root.startswith("file:") else root
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    return len(entries) >= 2 and all(e.is_dir() for e in entries)


def main(argv=None):
    a = arguments(argv)
    b = SparkSession.builder.appName("whisker extract")
    if a.master:
        b = b.master(a.master)
    spark = b.getOrCreate()
    root = a.input if "://" in a.input else "file:" + os.path.abspath(a.input)
    labelled = class_folders(root)
    prefix = root.rstrip("/") + "/"
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "[!._]*")
        .load(root)
        .select("path", "content")
    )
    fields = [T.StructField("path", T.StringType(), False)]
    if labelled:
        fields.append(T.StructField("label", T.StringType(), True))
    fields += [
        T.StructField("embedding", T.ArrayType(T.FloatType(), False), True),
        T.StructField("error", T.StringType(), True),
    ]
    schema = T.StructType(fields)

    def extract(batches):
        m = model(a)
        for batch in batches:
            paths = batch.column("path").to_pylist()
            x, errors = m.extract(
                batch.column("content").to_pylist(), layer=a.layer, pool=a.pool, errors="return"
            )
            # binaryFile writes local paths as file:/x (one slash)
            rel = []
            for p in paths:
                q = p.replace("file:///", "file:/")
                r = prefix.replace("file:///", "file:/")
                rel.append(q[len(r):] if q.startswith(r) else p)
            errors = [None if e is None else f"{p}: {e}" for p, e in zip(paths, errors)]
            emb = pa.array(
                [None if e is not None else row for row, e in zip(np.nan_to_num(x).tolist(), errors)],
                pa.list_(pa.float32()),
            )
            cols = [pa.array(rel, pa.string())]
            if labelled:
                cols.append(pa.array([r.split("/")[0] for r in rel], pa.string()))
            cols += [emb, pa.array(errors, pa.string())]
            yield pa.RecordBatch.from_arrays(cols, names=schema.fieldNames())

    files.mapInArrow(extract, schema).write.mode("overwrite").parquet(a.out)
    print(f"spark_extract.py: {a.input} → {a.out}")
    spark.stop()


if __name__ == "__main__":
    main()
