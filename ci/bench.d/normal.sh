# Normal e2image format (issue 3), sourced by ci/bench.sh (see README.md here).
# 1. e2image vs e2i-capture on the 16 GiB filesystem (target <= 0.5x); the two images must be
#    identical from byte 256 on (before it: host name, device, image inode, time).
# 2. e2i-install --dry-run of that image onto the filesystem: validates the image, identifies
#    the filesystem and plans every write.
# 3. The 2 TiB filesystem: a normal image would need 32-bit offsets past 4 GiB; e2i-capture
#    must refuse it (exit 1, no output) within a second. (e2image writes a corrupt ~34 GB
#    sparse file here, so it is not run.)
n=$(basename "$FS16" .img)
bench "$n normal/e2image" -- e2image "$FS16" "$WORK/a.e2i"
bench "$n normal/e2i-capture" -- "$E2I/e2i-capture" "$FS16" "$WORK/b.e2i"
e2image "$FS16" "$BENCH_DIR/a.e2i" 2>/dev/null
"$E2I/e2i-capture" "$FS16" "$BENCH_DIR/b.e2i"
if cmp -s -i 256 "$BENCH_DIR/a.e2i" "$BENCH_DIR/b.e2i"; then
  echo "normal: e2i-capture image identical to e2image's (from byte 256)"
else
  echo "normal: FAIL: e2i-capture image differs from e2image's" >&2
fi
bench "$n install dry run/e2i-install -n" -- sh -c '"$1/e2i-install" -n "$2" "$3" > /dev/null' _ \
  "$E2I" "$FS16" "$BENCH_DIR/b.e2i"
rm -f "$BENCH_DIR/a.e2i" "$BENCH_DIR/b.e2i"
bench "2 TiB normal refused/e2i-capture (must fail < 1 s)" -- bash -c '
  out=$1/normal-2t.e2i; t0=$(date +%s%N)
  "$2/e2i-capture" "$3" "$out" 2> "$1/normal-2t.err"; rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "normal: 2 TiB filesystem refused in ${ms} ms (exit $rc): $(cat "$1/normal-2t.err")" >&2
  [ "$rc" = 1 ] && [ ! -e "$out" ] && [ "$ms" -lt 1000 ]' _ "$WORK" "$E2I" "$FS2T"
