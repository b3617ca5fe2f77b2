#!/usr/bin/env bash
# A Python virtual environment for the Python-side checks (tools/py/requirements-test.txt),
# under $WHISKER_TESTDATA/pyenv: created once, brought up to date on each call (pip is quick
# when everything is installed). Prints the environment's python.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${WHISKER_TESTDATA:-$ROOT/.testdata}/pyenv"
if [ ! -x "$DIR/bin/python" ]; then
  python3 -m venv "$DIR" >&2 || {
    # Debian's python3 without ensurepip
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      python3 -m venv "$DIR" >&2
    else
      echo "tools/py/env.sh: python3 -m venv failed: install python3-venv" >&2
      exit 1
    fi
  }
fi
stamp="$DIR/.requirements"
if ! cmp -s "$ROOT/tools/py/requirements-test.txt" "$stamp" 2>/dev/null; then
  "$DIR/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/tools/py/requirements-test.txt" >&2
  cp "$ROOT/tools/py/requirements-test.txt" "$stamp"
fi
echo "$DIR/bin/python"
