#!/usr/bin/env bash
# Torture test of whisker's run directories, on real digits with the real EfficientNet-Lite0
# weights (tools/fetch-testdata.sh):
#   1. kill -9 at random moments of a head training, then --resume: the same model as an
#      uninterrupted run (same evaluation, same predictions, to the last digit);
#   2. a full disk (small tmpfs mounts for --out; skipped with a message where mounting is not
#      allowed): a clean error, no completion marker, readers refuse the partial run;
#   3. two trainings started at once into one --out: one writes the run, the other is refused;
#   4. FIFOs and devices given to every reader (images, folders, weights, models, run
#      markers): each command ends within 30 s with a clear error, no panic;
#   5. bombs through the CLI: a progressive JPEG of 5000 scans declaring 8000×8000, a 4 MB
#      zip declaring 4 GB: refused at once, the weights cache left clean;
#   6. 1100 clients that send half a header to `whisker serve` (the defaults): the API still
#      answers, and the slow connections are closed by the server.
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
# the outputs name the run's own folder (pictures, report): compared with it as RUN
ref_eval=$($W -q eval --json "$WORK/straight" "$DATA" | sed "s#$WORK/straight#RUN#g")
ref_pred=$($W -q predict --json "$WORK/straight" "$DATA"/3/*.png | sed "s#$WORK/straight#RUN#g")
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
[ "$($W -q eval --json "$RUN" "$DATA" | sed "s#$RUN#RUN#g")" = "$ref_eval" ] || fail "evaluation after $kills kills differs"
[ "$($W -q predict --json "$RUN" "$DATA"/3/*.png | sed "s#$RUN#RUN#g")" = "$ref_pred" ] || fail "predictions after $kills kills differ"
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

# 4. FIFOs and devices in every reader
FIFO="$WORK/pipe"
mkfifo "$FIFO"
FOLDER="$WORK/withfifo"
mkdir -p "$FOLDER/a" "$FOLDER/b"
cp "$DATA"/0/*.png "$FOLDER/a/" 2>/dev/null; cp "$DATA"/1/*.png "$FOLDER/b/" 2>/dev/null
mkfifo "$FOLDER/a/stuck.png"
FIFORUN="$WORK/fiforun"
cp -r "$RUN" "$FIFORUN"
python3 - "$FIFORUN/run.json" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
files = d.get("files")
if isinstance(files, dict):
    k = next(iter(files))
    files[k] = "/dev/zero"
elif isinstance(files, list) and files:
    files[0] = "/dev/zero"
json.dump(d, open(p, "w"))
PY
checks=0
reader() {  # reader LABEL ARGS...: ends within 30 s, no panic, any exit but a hang
  local label="$1"; shift
  set +e
  timeout 30 "$W" -q "$@" >/dev/null 2>"$WORK/err"
  local code=$?
  set -e
  [ "$code" -eq 124 ] && fail "$label: hung on a FIFO or device"
  grep -q panicked "$WORK/err" && fail "$label: panicked: $(cat "$WORK/err")"
  checks=$((checks + 1))
}
reader "classify FIFO" classify "$FIFO"
reader "classify /dev/zero" classify /dev/zero
reader "classify folder with a FIFO" classify "$FOLDER"
reader "predict FIFO" predict "$RUN" "$FIFO"
reader "classify --weights FIFO" classify --weights "$FIFO" "$DATA/0/$(ls "$DATA/0" | head -1)"
reader "classify --weights /dev/zero" classify --weights /dev/zero "$DATA/0/$(ls "$DATA/0" | head -1)"
reader "weights fetch --from FIFO" weights fetch efficientnet_lite0 --from "$FIFO"
reader "train on a folder with a FIFO" train "$FOLDER" --out "$WORK/fifotrain" --epochs 1 --test-split 0.3
reader "eval of a run naming /dev/zero" eval "$FIFORUN" "$DATA"
reader "cam FIFO" cam --out "$WORK/cams" "$FIFO"
reader "attack FIFO" attack --untargeted --out "$WORK/adv.png" "$FIFO"
ok "$checks readers given FIFOs and devices: each ended with an answer, none hung or panicked"

# 5. bombs through the CLI
python3 - "$WORK" <<'PY'
import struct, sys, zipfile, os
work = sys.argv[1]
# a progressive JPEG header declaring 8000x8000 and 5000 empty scans
sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, 8000, 8000, 1) + b"\x01\x11\x00"
dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)
dht = b"\xff\xc4" + struct.pack(">H", 20) + b"\x00" + bytes([1] + [0] * 15) + b"\x00"
sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
open(os.path.join(work, "scanbomb.jpg"), "wb").write(b"\xff\xd8" + dqt + sof + dht + sos * 5000 + b"\xff\xd9")
# a zip whose one entry declares 4 GB (stored, data 4 MB)
p = os.path.join(work, "zipbomb.pth")
with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    z.writestr("archive/data/0", bytes(4 << 20))
b = bytearray(open(p, "rb").read())
i = b.rfind(b"PK\x01\x02")
while i >= 0:
    struct.pack_into("<I", b, i + 24, 0xFFFFFFF0)
    i = b.rfind(b"PK\x01\x02", 0, i)
open(p, "wb").write(bytes(b))
PY
start=$(date +%s)
set +e; timeout 30 "$W" -q classify "$WORK/scanbomb.jpg" >/dev/null 2>"$WORK/err"; code=$?; set -e
[ "$code" -eq 124 ] && fail "the scan bomb hung classify"
grep -q panicked "$WORK/err" && fail "the scan bomb panicked"
grep -qi "scan" "$WORK/err" || fail "the scan bomb's refusal is unclear: $(cat "$WORK/err")"
set +e; timeout 60 "$W" -q weights fetch efficientnet_lite0 --from "$WORK/zipbomb.pth" >/dev/null 2>"$WORK/err"; code=$?; set -e
[ "$code" -eq 0 ] && fail "the zip bomb was accepted"
[ "$code" -eq 124 ] && fail "the zip bomb hung weights fetch"
grep -q panicked "$WORK/err" && fail "the zip bomb panicked: $(cat "$WORK/err")"
grep -q "zipbomb.pth" "$WORK/err" || fail "the zip bomb's error does not name the file: $(cat "$WORK/err")"
leftover=$(find "$WHISKER_HOME" -name '.tmp*' | wc -l)
[ "$leftover" -eq 0 ] || fail "$leftover temporary files left in the weights cache"
ok "a 5000-scan JPEG and a zip declaring 4 GB: refused in $(( $(date +%s) - start )) s, '$(tail -1 "$WORK/err" | cut -c1-100)…', the cache clean"

# 6. slow clients against the server's defaults
PORT=$(( 20000 + RANDOM % 20000 ))
"$W" -q serve --addr "127.0.0.1:$PORT" -b efficientnet_lite0 >/dev/null 2>"$WORK/serve.err" &
SERVE=$!
python3 - "$PORT" <<'PY' || { kill "$SERVE"; fail "the server did not start: $(cat "$WORK/serve.err")"; }
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/models", timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
python3 - "$PORT" <<'PY' || { kill "$SERVE"; fail "slow clients starved the server"; }
import socket, sys, time, urllib.request
port = int(sys.argv[1])
slow = []
for _ in range(1100):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(s)
    except OSError:
        pass
t = time.time()
with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=60) as r:
    assert r.status == 200
took = time.time() - t
# the server closes a half-sent header after its header timeout (10 s)
time.sleep(12)
closed = 0
for s in slow[:50]:
    s.settimeout(1)
    try:
        s.recv(64)  # b"" (closed) or the server's 408: either way it ended the wait
        closed += 1
    except socket.timeout:
        pass  # still held open
    except OSError:
        closed += 1  # reset by the server
print(f"{len(slow)} slow clients open; /api/models answered in {took:.1f} s; {closed} of 50 closed by the server")
assert took < 40 and closed == 50
PY
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
ok "1100 half-header clients: the API answered and the server closed them"
echo "torture: all scenarios passed"
