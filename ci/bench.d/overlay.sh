# Overlays and zstd clusters (issue 16): capture -Q with deflate and zstd clusters (zstd must
# take at most 0.7x deflate's time), and an overlay on a previous capture of the same
# filesystem (the comparison pass reads the base as needed). Sourced by ci/bench.sh.
n=$(basename "$FS16" .img)
bench "$n -Q compressed/e2i-capture -Q --compress (deflate)" -- "$E2I/e2i-capture" -Q --compress "$FS16" "$WORK/d.qcow2"
bench "$n -Q compressed/e2i-capture -Q --compress=zstd" -- "$E2I/e2i-capture" -Q --compress=zstd "$FS16" "$WORK/z.qcow2"
"$E2I/e2i-capture" -Q "$FS16" "$BENCH_DIR/fs16-base.qcow2"
bench "$n overlay/e2i-capture -Q (full)" -- "$E2I/e2i-capture" -Q "$FS16" "$WORK/f.qcow2"
bench "$n overlay/e2i-capture -Q --backing (no change)" -- "$E2I/e2i-capture" -Q --backing "$BENCH_DIR/fs16-base.qcow2" "$FS16" "$WORK/o.qcow2"
"$E2I/e2i-capture" -Q --backing "$BENCH_DIR/fs16-base.qcow2" "$FS16" "$BENCH_DIR/fs16-ov.qcow2"
bench "$n read back/qcow2-to-raw (full)" -- "$E2I/qcow2-to-raw" "$BENCH_DIR/fs16-base.qcow2" "$WORK/f.raw"
bench "$n read back/qcow2-to-raw (overlay)" -- "$E2I/qcow2-to-raw" "$BENCH_DIR/fs16-ov.qcow2" "$WORK/o.raw"
rm -f "$BENCH_DIR/fs16-base.qcow2" "$BENCH_DIR/fs16-ov.qcow2"
