#!/usr/bin/env bash
# Benchmarks e2i against e2fsprogs side by side, on two filesystems made once and cached:
#   $FS16: a 16 GiB ext4 image holding ~200k files (~2.5 GiB of data), made with mkfs.ext4 -d
#          from a generated tree on tmpfs (the fastest way measured: ~1 min; debugfs -f with
#          200k write commands does the same work slower);
#   $FS2T: a 2 TiB empty ext4 image (sparse; -E lazy_itable_init=1,lazy_journal_init=1).
# Prints a table: wall time (best of $E2I_BENCH_RUNS runs, default 5: the machine is shared),
# peak RSS (largest of the runs, from wait4's rusage), and the ratio
# of each command to the first one of its case (the baseline, e.g. e2image).
#
# Usage: ci/bench.sh          scratch space: $E2I_BENCH_DIR (default /var/tmp/e2i-bench),
#                              needs ~6 GiB of disk and ~3 GiB of /dev/shm while making $FS16.
#        ci/bench.sh --cold   the cold-cache cases only (ci/bench.d/cold/run.sh: page cache
#                              dropped before every run; root; ~4 GiB more scratch space).
# $E2I_BENCH_BIN: a directory of e2i binaries to time instead of this tree's release build
# (e.g. another checkout's target/release, to compare two versions on the same machine).
#
# Fragments: every ci/bench.d/*.sh is sourced after the built-in cases. They may use
#   $E2I (directory of the release binaries), $WORK (scratch directory, emptied per run),
#   $FS16, $FS2T, and `bench CASE/TOOL -- CMD...` (one timed command; the first TOOL of a
#   CASE is the baseline the others are compared with).
set -euo pipefail
COLD=0
case "${1:-}" in
  --cold) COLD=1 ;;
  "") ;;
  *) echo "usage: ci/bench.sh [--cold]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${E2I_BENCH_RUNS:-5}
BENCH_DIR=${E2I_BENCH_DIR:-/var/tmp/e2i-bench}
mkdir -p "$BENCH_DIR"
WORK=$BENCH_DIR/work
FS16=$BENCH_DIR/fs16g-200k.img
FS2T=$BENCH_DIR/fs2t-empty.img
export E2FSPROGS_FAKE_TIME=1700000000

ci/setup.sh
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time is missing (apt-get install time; ci/setup.sh does)" >&2; exit 1; }
if [ -n "${E2I_BENCH_BIN:-}" ]; then
  E2I=$(cd "$E2I_BENCH_BIN" && pwd)
else
  cargo build --release -q
  E2I=$ROOT/target/release
fi

log() { echo "bench: $*" >&2; }

make_fs16() {
  [ -f "$FS16.done" ] && return
  local tree=/dev/shm/e2i-bench-tree.$$ t0=$SECONDS
  log "making $FS16 (once): generating 200k files in $tree"
  rm -rf "$tree" "$FS16"
  python3 - "$tree" 200000 <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
blob = bytes(rng.randrange(256) for _ in range(1 << 16)) * 48   # 3 MiB of varied bytes
per = 1000                                                       # files per directory
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // per), "s%d" % (i % 4))
    if i % per < 4:
        os.makedirs(d, exist_ok=True)
    # mostly small files, a few large ones (multi-extent)
    size = rng.randrange(0, 16384) if rng.random() < 0.995 else rng.randrange(1 << 20, 3 << 20)
    off = rng.randrange(0, len(blob) - size)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(blob[off:off + size])
    if i % 5000 == 0:
        os.symlink("f%06d" % i, os.path.join(d, "l%06d" % i))
EOF
  log "tree ready after $((SECONDS - t0)) s; mkfs.ext4 -d"
  mkfs.ext4 -q -F -U 9b0c4f8e-16a1-4c5d-8e2f-200000000016 -E hash_seed=9b0c4f8e-16a1-4c5d-8e2f-2000000000ff \
    -d "$tree" "$FS16" 16G >/dev/null
  rm -rf "$tree"
  touch "$FS16.done"
  log "$FS16 made in $((SECONDS - t0)) s"
}

make_fs2t() {
  [ -f "$FS2T.done" ] && return
  local t0=$SECONDS
  log "making $FS2T (once)"
  rm -f "$FS2T"
  mkfs.ext4 -q -F -U 9b0c4f8e-16a1-4c5d-8e2f-2000000002aa -E lazy_itable_init=1,lazy_journal_init=1 "$FS2T" 2T >/dev/null
  touch "$FS2T.done"
  log "$FS2T made in $((SECONDS - t0)) s"
}

ROWS=()
# TIMER OUTFILE CMD...: run CMD under GNU time (a small process: a child forked from python
# would inherit python's RSS high-water mark across exec), write "wall-seconds peak-RSS-KiB
# blocks-read" to OUTFILE (wall time measured here, to the millisecond; blocks read from
# storage in 512-byte units, children included), exit with CMD's status.
TIMER='
import subprocess, sys, time
out = sys.argv[1]
t = time.perf_counter()
rc = subprocess.call(["/usr/bin/time", "-f", "%M %I", "-o", out + ".rss"] + sys.argv[2:])
wall = time.perf_counter() - t
rss, inblocks = open(out + ".rss").read().splitlines()[-1].split()
with open(out, "w") as f:
    f.write("%.3f %s %s\n" % (wall, rss, inblocks))
sys.exit(rc)
'
# bench CASE/TOOL -- CMD...: run CMD $RUNS times (each after rm -rf $WORK/* and sync), record
# the best wall time and the largest peak RSS.
bench() {
  local name=$1
  shift
  [ "${1:-}" = -- ] && shift
  local best="" rss=0 i m
  for ((i = 0; i < RUNS; i++)); do
    rm -rf "${WORK:?}"/*
    sync
    if ! python3 -c "$TIMER" "$BENCH_DIR/time.out" "$@" >/dev/null 2>"$BENCH_DIR/stderr.out"; then
      log "$name: failed: $(tail -3 "$BENCH_DIR/stderr.out")"
      ROWS+=("$name|FAIL|0")
      return 0
    fi
    read -r w m _ <"$BENCH_DIR/time.out"
    if [ -z "$best" ] || awk -v a="$w" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$w; fi
    [ "$m" -gt "$rss" ] && rss=$m
  done
  log "$name: ${best}s, ${rss} KiB"
  ROWS+=("$name|$best|$rss")
}

report() {
  printf '\n%-34s %-16s %10s %8s %12s\n' case command "wall (s)" ratio "peak RSS"
  local row case tool wall rss base="" lastcase=""
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name wall rss <<<"$row"
    case=${name%/*}
    tool=${name##*/}
    if [ "$case" != "$lastcase" ]; then
      base=$wall
      lastcase=$case
    fi
    local ratio=-
    if [ "$wall" != FAIL ] && [ "$base" != FAIL ]; then
      ratio=$(awk -v a="$wall" -v b="$base" 'BEGIN{ if (b > 0) printf "%.3f", a / b; else print "-" }')
    fi
    printf '%-34s %-16s %10s %8s %9.1f MB\n' "$case" "$tool" "$wall" "$ratio" "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
  done
}

make_fs16
mkdir -p "$WORK"
if [ $COLD = 1 ]; then
  # shellcheck source=ci/bench.d/cold/run.sh
  . ci/bench.d/cold/run.sh
  rm -rf "${WORK:?}"/*
  exit 0
fi
make_fs2t
log "16 GiB: $(dumpe2fs -h "$FS16" 2>/dev/null | sed -n 's/^Inode count: *//p') inodes, $(( $(dumpe2fs -h "$FS16" 2>/dev/null | sed -n 's/^Free inodes: *//p') )) free"

bench "16G-200k-files -r/e2image" -- e2image -r "$FS16" "$WORK/out.raw"
bench "16G-200k-files -r/e2i-capture" -- "$E2I/e2i-capture" -r "$FS16" "$WORK/out.raw"
# e2i-capture makes a new file durable (fdatasync) before renaming it into place; e2image does
# not sync. This case times both until the image is on disk.
bench "16G-200k-files -r + fdatasync/e2image" -- sh -c 'e2image -r "$1" "$2" && sync -d "$2"' sh "$FS16" "$WORK/out.raw"
bench "16G-200k-files -r + fdatasync/e2i-capture" -- sh -c '"$0" -r "$1" "$2" && sync -d "$2"' "$E2I/e2i-capture" "$FS16" "$WORK/out.raw"
bench "2T-empty -r/e2image" -- e2image -r "$FS2T" "$WORK/out.raw"
bench "2T-empty -r/e2i-capture" -- "$E2I/e2i-capture" -r "$FS2T" "$WORK/out.raw"

shopt -s nullglob
for frag in ci/bench.d/*.sh; do
  # shellcheck source=/dev/null
  . "$frag"
done
rm -rf "${WORK:?}"/*
report
