"""Scale-out throughput on this machine, same run, alternating: one `whisker extract` process
with 2 threads against the Ray recipe (examples/ray_extract.py's Extractor) with 2 workers × 1
thread, and the Python package's own call (Model.extract on paths, 2 threads) for the per-image
cost of going through Python. Images: the test photos copied N times (decoding and resizing
real photos is part of the work).

usage: python tools/bench/scaleout.py WHISKER_BINARY TESTDATA_DIR [--images 400] [--rounds 2]
(the Python of tools/py/env.sh: whisker, ray, pyarrow installed)
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import ray

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import ray_extract  # noqa: E402

import whisker  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("whisker")
p.add_argument("testdata")
p.add_argument("--images", type=int, default=400)
p.add_argument("--rounds", type=int, default=2)
p.add_argument("-b", "--backbone", default="efficientnet_lite0")
a = p.parse_args()
weights = os.path.join(a.testdata, "efficientnet-lite0-57934424.pth")

tmp = tempfile.mkdtemp()
try:
    data = os.path.join(tmp, "photos")
    os.makedirs(data)
    photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    for i in range(a.images):
        src = photos[i % len(photos)]
        shutil.copy(os.path.join(a.testdata, src), os.path.join(data, f"{i:06d}{os.path.splitext(src)[1]}"))
    env = {**os.environ, "WHISKER_HOME": os.path.join(tmp, "home")}

    def cli(k):
        out = os.path.join(tmp, f"cli{k}")
        t = time.perf_counter()
        subprocess.run([a.whisker, "-q", "--threads", "2", "extract", data, "--out", out, "--weights", weights],
                       check=True, env=env)
        return a.images / (time.perf_counter() - t)

    # (the workers import the recipe's module too)
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "examples"), os.environ.get("PYTHONPATH", "")])
    # as the recipe's main() does for a local cluster
    os.environ.setdefault("RAY_num_workers_soft_limit", "6")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)

    def ray_job(k):
        args = ray_extract.arguments([data, os.path.join(tmp, f"ray{k}"), "--weights", weights,
                                      "--workers", "2", "--threads", "1"])
        t = time.perf_counter()
        ray_extract.extract(args, data)
        return a.images / (time.perf_counter() - t)

    model = whisker.Model.pretrained(a.backbone, weights=weights, threads=2)
    files = sorted(os.path.join(data, f) for f in os.listdir(data))

    def python_call(k):
        t = time.perf_counter()
        model.extract(files, batch_size=16)
        return a.images / (time.perf_counter() - t)

    ray_job("warm")
    rates = {"cli": [], "ray": [], "python": []}
    for r in range(a.rounds):
        for name, f in (("cli", cli), ("ray", ray_job), ("python", python_call)):
            rates[name].append(f(r))
    best = {k: max(v) for k, v in rates.items()}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; {os.cpu_count()} cores; ray {ray.__version__}; whisker {whisker.__version__}; {a.backbone}, {a.images} photos")
    for k, v in rates.items():
        print(f"{k:>7}: " + ", ".join(f"{x:.1f}" for x in v) + " images/s")
    print(f"Ray 2 workers x 1 thread / CLI 2 threads: {best['ray'] / best['cli']:.2f}x (best of {a.rounds})")
    print(f"Python call / CLI: {best['python'] / best['cli']:.2f}x; "
          f"per-image cost of the Python call: {1e3 * (1 / best['python'] - 1 / best['cli']):+.2f} ms")
finally:
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
