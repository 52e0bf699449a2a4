# shellcheck shell=bash
# e2i-move benchmarks (issue 6), sourced by ci/bench.sh (see README.md here).
# Clone: `e2image -ra SRC DST` against `e2i-move SRC DST` (target <= 0.6x e2image), `sync`
# before each run. In-place move right by 1 MiB: e2image's (not crash-safe) against e2i-move's
# journalled one; both timings include the same sparse copy of the source made first.
# Scale: MOVE_BENCH_FS_SIZE (default 16G), MOVE_BENCH_DATA_MB (default 2048). The source image
# is made once and cached in $BENCH_DIR.
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
}
move_bench
