#!/usr/bin/env bash
# Torture test of whisker's run directories, on real digits with the real EfficientNet-Lite0
# weights (tools/fetch-testdata.sh):
#   1. kill -9 at random moments of a head training, then --resume: the same model as an
#      uninterrupted run (same evaluation, same predictions, to the last digit);
#   2. a full disk (small tmpfs mounts for --out; skipped with a message where mounting is not
#      allowed): a clean error, no completion marker, readers refuse the partial run;
#   3. two trainings started at once into one --out: one writes the run, the other is refused.
# Usage: tools/torture.sh [KILLS]   (default 20). Exit 0 when every scenario holds.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS="${1:-20}"
export WHISKER_TESTDATA="${WHISKER_TESTDATA:-$PWD/.testdata}"
tools/fetch-testdata.sh >/dev/null
cargo build --release -q -p whisker-cli
W="${CARGO_TARGET_DIR:-$PWD/target}/release/whisker"
WORK=$(mktemp -d)
MNT=""
cleanup() { [ -n "$MNT" ] && umount "$MNT" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
export WHISKER_HOME="$WORK/home"
$W -q weights fetch efficientnet_lite0 --from "$WHISKER_TESTDATA/efficientnet-lite0-57934424.pth" >/dev/null
$W -q data digits "$WORK/all" >/dev/null
DATA="$WORK/digits"
for c in 0 1 2 3 4; do mkdir -p "$DATA/$c"; ls "$WORK/all/$c" | head -30 | while read -r f; do cp "$WORK/all/$c/$f" "$DATA/$c/"; done; done
fail() { echo "torture: FAILED: $*" >&2; exit 1; }
ok() { echo "torture: ok: $*"; }
TRAIN=(train "$DATA" --mode head --epochs 200 --patience 0 --hidden 256 --head-batch-size 4 --test-split 0.3)

# 1. kill -9 and resume
$W -q "${TRAIN[@]}" --out "$WORK/straight" >/dev/null 2>&1 || fail "uninterrupted run"
ref_eval=$($W -q eval --json "$WORK/straight" "$DATA")
ref_pred=$($W -q predict --json "$WORK/straight" "$DATA"/3/*.png)
RUN="$WORK/killed"
kills=0
$W -q "${TRAIN[@]}" --out "$RUN" >/dev/null 2>&1 &
pid=$!
for i in $(seq 1 "$KILLS"); do
  sleep "0.$(( (RANDOM % 9) + 1 ))"
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null && kills=$((kills + 1)); fi
  wait "$pid" 2>/dev/null || true
  [ -f "$RUN/run.json" ] && break
  if [ -f "$RUN/checkpoint.safetensors" ]; then
    $W -q "${TRAIN[@]}" --resume --out "$RUN" >/dev/null 2>"$WORK/err" &
  else
    $W -q "${TRAIN[@]}" --force --out "$RUN" >/dev/null 2>"$WORK/err" &
  fi
  pid=$!
done
wait "$pid" 2>/dev/null || true
[ -f "$RUN/run.json" ] || $W -q "${TRAIN[@]}" --resume --out "$RUN" >/dev/null 2>&1 || fail "final resume: $(cat "$WORK/err")"
[ "$($W -q eval --json "$RUN" "$DATA")" = "$ref_eval" ] || fail "evaluation after $kills kills differs"
[ "$($W -q predict --json "$RUN" "$DATA"/3/*.png)" = "$ref_pred" ] || fail "predictions after $kills kills differ"
ok "$kills kill -9s during training, resumed: the same evaluation and predictions as an uninterrupted run"

# 2. a full disk
MNT="$WORK/small"
mkdir -p "$MNT"
if mount -t tmpfs -o size=64k tmpfs "$MNT" 2>/dev/null; then
  for size in 24k 64k 160k; do
    mount -o remount,size=$size "$MNT"
    rm -rf "${MNT:?}"/*
    set +e
    $W -q train "$DATA" --out "$MNT/run" --test-split 0.3 >/dev/null 2>"$WORK/err"
    code=$?
    set -e
    grep -q panicked "$WORK/err" && fail "panic on a full disk ($size): $(cat "$WORK/err")"
    if [ "$code" -eq 0 ]; then
      [ -f "$MNT/run/run.json" ] || fail "exit 0 without a complete run ($size)"
      ok "disk of $size: enough room, run complete"
    else
      [ -f "$MNT/run/run.json" ] && fail "a failed run is marked complete ($size)"
      grep -qi "no space" "$WORK/err" || fail "unclear error on a full disk ($size): $(cat "$WORK/err")"
      if [ -f "$MNT/run/model.safetensors" ]; then
        $W -q eval "$MNT/run" "$DATA" >/dev/null 2>"$WORK/err2" && fail "eval accepted an incomplete run ($size)"
        grep -q incomplete "$WORK/err2" || fail "eval's refusal is unclear: $(cat "$WORK/err2")"
      fi
      ok "disk of $size full: '$(tail -1 "$WORK/err")', no completion marker"
    fi
  done
  umount "$MNT"; MNT=""
else
  echo "torture: skipped: the full-disk scenario needs to mount a tmpfs (not allowed here)"
fi

# 3. two trainings at once into one run directory
RUN="$WORK/race"
$W -q train "$DATA" --out "$RUN" --test-split 0.3 >/dev/null 2>"$WORK/a" & a=$!
$W -q train "$DATA" --out "$RUN" --test-split 0.3 >/dev/null 2>"$WORK/b" & b=$!
set +e; wait $a; ca=$?; wait $b; cb=$?; set -e
[ $((ca == 0)) -ne $((cb == 0)) ] || fail "concurrent runs: exit codes $ca and $cb"
grep -qE "another whisker process|already holds a run" "$WORK/a" "$WORK/b" || fail "the refused run's message is unclear"
$W -q eval "$RUN" "$DATA" >/dev/null || fail "the surviving run does not evaluate"
ok "two concurrent trainings: one run written ($ca/$cb), the other refused"
echo "torture: all scenarios passed"
