# shellcheck shell=bash
# e2i-move benchmarks (issue 6), sourced by ci/bench.sh (see README.md here).
# Clone: `e2image -ra SRC DST` against `e2i-move SRC DST` (target <= 0.6x e2image), `sync`
# before each run. In-place move right by 1 MiB: e2image's (not crash-safe) against e2i-move's
# journalled one; both timings include the same sparse copy of the source made first.
# Scale: MOVE_BENCH_FS_SIZE (default 16G), MOVE_BENCH_DATA_MB (default 2048). The source image
# is made once and cached in $BENCH_DIR.
# Before/after: MOVE_BENCH_BASELINE=DIR (a folder holding an older e2i-move) adds a case that
# times that binary's in-place move first and this build's second, alternating run by run, so
# the ratio column is after/before measured under the same load.
move_bench() {
  local fs_size=${MOVE_BENCH_FS_SIZE:-16G} data_mb=${MOVE_BENCH_DATA_MB:-2048}
  local img=$BENCH_DIR/move-$fs_size-${data_mb}M.img
  if [ ! -f "$img.done" ]; then
    local tree=$BENCH_DIR/move-tree n=$(( (data_mb + 63) / 64 )) i
    rm -rf "$tree"; mkdir -p "$tree/small"
    for ((i = 0; i < n; i++)); do
      head -c $(( data_mb * 1048576 / n )) /dev/urandom > "$tree/f$i"
    done
    for ((i = 0; i < 2000; i++)); do echo "small file $i" > "$tree/small/s$i"; done
    mkfs.ext4 -q -F -b 4096 -d "$tree" "$img" "$fs_size"
    rm -rf "$tree"
    touch "$img.done"
  fi
  local n; n=$(basename "$img" .img)
  bench "$n clone/e2image -ra" -- sh -c 'sync; e2image -ra "$1" "$2" 2>/dev/null' _ "$img" "$WORK/a.raw"
  bench "$n clone/e2i-move" -- sh -c 'sync; "$1/e2i-move" "$2" "$3"' _ "$E2I" "$img" "$WORK/b.raw"
  bench "$n move right 1 MiB/cp + e2image -ra -O 1M" -- \
    sh -c 'cp --sparse=always "$1" "$2" && sync && e2image -ra -O 1048576 "$2" 2>/dev/null' _ "$img" "$WORK/a.raw"
  bench "$n move right 1 MiB/cp + e2i-move -O 1M" -- \
    sh -c 'cp --sparse=always "$1" "$2" && sync && "$3/e2i-move" -O 1048576 "$2"' _ "$img" "$WORK/b.raw" "$E2I"
  if [ -n "${MOVE_BENCH_BASELINE:-}" ]; then
    move_bench_before_after "$n" "$img" "$MOVE_BENCH_BASELINE"
  fi
}

# The in-place move alone (the copy made and synced outside the timing), the baseline binary
# and this build alternating, $RUNS rounds; best of each goes to the table as one case.
move_bench_before_after() {
  local n=$1 img=$2 base=$3 r bin w m best_before="" best_after="" rss_before=0 rss_after=0
  for ((r = 0; r < RUNS; r++)); do
    for bin in "$base" "$E2I"; do
      rm -rf "${WORK:?}"/*
      cp --sparse=always "$img" "$WORK/m.raw" && sync
      python3 -c "$TIMER" "$BENCH_DIR/time.out" "$bin/e2i-move" -O 1048576 "$WORK/m.raw" \
        >/dev/null 2>"$BENCH_DIR/stderr.out" || { log "before/after: $bin failed: $(tail -3 "$BENCH_DIR/stderr.out")"; return 0; }
      read -r w m _ <"$BENCH_DIR/time.out"
      if [ "$bin" = "$base" ]; then
        if [ -z "$best_before" ] || awk -v a="$w" -v b="$best_before" 'BEGIN{exit !(a<b)}'; then best_before=$w; fi
        [ "$m" -gt "$rss_before" ] && rss_before=$m
      else
        if [ -z "$best_after" ] || awk -v a="$w" -v b="$best_after" 'BEGIN{exit !(a<b)}'; then best_after=$w; fi
        [ "$m" -gt "$rss_after" ] && rss_after=$m
      fi
    done
  done
  log "$n move right 1 MiB alone: before ${best_before}s, after ${best_after}s"
  ROWS+=("$n move alone/before|$best_before|$rss_before")
  ROWS+=("$n move alone/after|$best_after|$rss_after")
}
move_bench
