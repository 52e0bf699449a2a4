# qcow2 benchmarks; sourced by ci/bench.sh, which provides $E2I (our binaries), $WORK (scratch),
# $FS16 (16 GiB ext4 with many files), $FS2T (2 TiB empty sparse ext4) and
# `bench NAME -- CMD...` (times CMD and records its peak RSS).
for fs in "$FS16" "$FS2T"; do
  n=$(basename "$fs")
  rm -f "$WORK/$n.e2image.qcow2" "$WORK/$n.e2i.qcow2" "$WORK/$n.e2i-z.qcow2"
  bench "qcow2: e2image -Q $n" -- e2image -Q "$fs" "$WORK/$n.e2image.qcow2"
  bench "qcow2: e2i-capture -Q $n" -- "$E2I/e2i-capture" -Q "$fs" "$WORK/$n.e2i.qcow2"
  bench "qcow2: e2i-capture -Q --compress $n" -- "$E2I/e2i-capture" -Q --compress "$fs" "$WORK/$n.e2i-z.qcow2"
done
n=$(basename "$FS16")
rm -f "$WORK/$n.e2image.raw" "$WORK/$n.q2r.raw"
bench "qcow2: e2image -r x.qcow2 $n" -- e2image -r "$WORK/$n.e2i.qcow2" "$WORK/$n.e2image.raw"
bench "qcow2: qcow2-to-raw $n" -- "$E2I/qcow2-to-raw" "$WORK/$n.e2i.qcow2" "$WORK/$n.q2r.raw"
bench "qcow2: e2i-capture -r from qcow2 $n" -- "$E2I/e2i-capture" -r "$WORK/$n.e2i.qcow2" "$WORK/$n.cap.raw"
rm -f "$WORK"/*.qcow2 "$WORK/$n.e2image.raw" "$WORK/$n.q2r.raw" "$WORK/$n.cap.raw"
