# Normal e2image format (sourced by ci/bench.sh; uses $E2I, $WORK, $FS16, $FS2T and bench).
# 1. e2image vs e2i-capture on the 16 GiB filesystem: time and peak RSS; the two images must
#    be identical from byte 256 on (before it: host name, device, image inode, time).
# 2. e2i-install --dry-run of that image onto the filesystem: validates the image, identifies
#    the filesystem and plans every write, reading nothing else.
# 3. The 2 TiB filesystem: a normal image would need 32-bit offsets past 4 GiB; e2i-capture
#    must refuse it (exit 1, no output) within a second. (e2image writes a corrupt ~34 GB
#    sparse file here, so it is not run.)
bench normal-e2image-16g -- e2image "$FS16" "$WORK/normal-e2image.e2i"
bench normal-e2i-capture-16g -- "$E2I/e2i-capture" "$FS16" "$WORK/normal-e2i.e2i"
if cmp -s -i 256 "$WORK/normal-e2image.e2i" "$WORK/normal-e2i.e2i"; then
  echo "normal: e2i-capture image identical to e2image's (from byte 256)"
else
  echo "normal: FAIL: e2i-capture image differs from e2image's" >&2
fi
rm -f "$WORK/normal-e2image.e2i"
bench normal-e2i-install-dry-run-16g -- sh -c '"$1/e2i-install" -n "$2" "$3" > /dev/null' _ \
  "$E2I" "$FS16" "$WORK/normal-e2i.e2i"
rm -f "$WORK/normal-e2i.e2i"
bench normal-refuses-2t -- bash -c '
  out=$1/normal-2t.e2i; t0=$(date +%s%N)
  "$2/e2i-capture" "$3" "$out" 2> "$1/normal-2t.err"; rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "normal: 2 TiB filesystem refused in ${ms} ms (exit $rc): $(cat "$1/normal-2t.err")"
  rm -f "$1/normal-2t.err"
  [ "$rc" = 1 ] && [ ! -e "$out" ] && [ "$ms" -lt 1000 ]' _ "$WORK" "$E2I" "$FS2T"
