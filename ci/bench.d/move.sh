# shellcheck shell=bash
# Benchmark fragment for e2i-move, sourced by ci/bench.sh, which provides:
#   $E2I   directory of our release binaries
#   $WORK  scratch directory
#   bench NAME -- CMD...   time one run of CMD under NAME
# Clone speed: `e2image -ra SRC DST` against `e2i-move SRC DST` (target: <= 0.6x e2image),
# then an in-place move right by 1 MiB (e2image -ra -o 0 -O 1M, unsafe) against
# e2i-move's journalled one.
# Scale (defaults as specified): MOVE_BENCH_FS_SIZE=16G, MOVE_BENCH_DATA_MB=2048.

move_bench() {
  local fs_size=${MOVE_BENCH_FS_SIZE:-16G}
  local data_mb=${MOVE_BENCH_DATA_MB:-2048}
  local dir=$WORK/move-bench
  local img=$dir/src.img
  mkdir -p "$dir"
  rm -f "$img" "$dir"/*.raw "$dir"/*.e2i-move
  # A 16 GiB ext4 image holding ~2 GB of incompressible data in 64 MiB files (fewer for
  # a small scale), plus a few thousand small files.
  local tree=$dir/tree n=$(( (data_mb + 63) / 64 )) i
  rm -rf "$tree"; mkdir -p "$tree/small"
  for ((i = 0; i < n; i++)); do
    head -c $(( data_mb * 1048576 / n )) /dev/urandom > "$tree/f$i"
  done
  for ((i = 0; i < 2000; i++)); do echo "small file $i" > "$tree/small/s$i"; done
  mkfs.ext4 -q -F -b 4096 -d "$tree" "$img" "$fs_size"
  rm -rf "$tree"

  rm -f "$dir/e2image.raw"; sync
  bench move-clone-e2image -- e2image -ra "$img" "$dir/e2image.raw"
  rm -f "$dir/e2i.raw"; sync
  bench move-clone-e2i -- "$E2I/e2i-move" "$img" "$dir/e2i.raw"
  cmp "$dir/e2image.raw" "$dir/e2i.raw" || echo "move.sh: the clones differ!" >&2
  rm -f "$dir/e2image.raw"; sync

  # In-place move right by 1 MiB: e2image's (not crash-safe) and ours (journalled).
  cp --sparse=always "$img" "$dir/a.raw"; cp --sparse=always "$img" "$dir/b.raw"; sync
  bench move-inplace-e2image -- e2image -ra -O 1048576 "$dir/a.raw"
  sync
  bench move-inplace-e2i -- "$E2I/e2i-move" -O 1048576 "$dir/b.raw"
  rm -f "$dir"/*.raw "$dir"/*.e2i-move "$img"
}
move_bench
