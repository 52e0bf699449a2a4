# qcow2 benchmarks (issue 4): capture -Q against e2image -Q, and qcow2 → raw against
# e2image -r of a qcow2. Sourced by ci/bench.sh (see README.md here).
for fs in "$FS16" "$FS2T"; do
  n=$(basename "$fs" .img)
  bench "$n -Q/e2image -Q" -- e2image -Q "$fs" "$WORK/a.qcow2"
  bench "$n -Q/e2i-capture -Q" -- "$E2I/e2i-capture" -Q "$fs" "$WORK/b.qcow2"
  bench "$n -Q/e2i-capture -Q --compress" -- "$E2I/e2i-capture" -Q --compress "$fs" "$WORK/c.qcow2"
done
n=$(basename "$FS16" .img)
"$E2I/e2i-capture" -Q "$FS16" "$BENCH_DIR/fs16.qcow2" 2>/dev/null || true
bench "$n qcow2 to raw/e2image -r" -- e2image -r "$BENCH_DIR/fs16.qcow2" "$WORK/a.raw"
bench "$n qcow2 to raw/qcow2-to-raw" -- "$E2I/qcow2-to-raw" "$BENCH_DIR/fs16.qcow2" "$WORK/b.raw"
bench "$n qcow2 to raw/e2i-capture -r (qcow2 source)" -- "$E2I/e2i-capture" -r "$BENCH_DIR/fs16.qcow2" "$WORK/c.raw"
rm -f "$BENCH_DIR/fs16.qcow2"
