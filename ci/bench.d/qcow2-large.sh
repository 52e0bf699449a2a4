# qcow2 of a filesystem past qemu's limits for one cluster per block (12 TiB, 4 KiB blocks:
# e2i writes 8 KiB clusters; e2image -Q writes 4 KiB ones, an L1 table of 48 MiB that qemu
# refuses, so its time is only a reference). The filesystem is made once in $BENCH_DIR
# (sparse, ~0.2 GB; ext4 holds files up to 16 TiB). Sourced by ci/bench.sh.
FS12T=$BENCH_DIR/fs12t-empty.img
if [ ! -f "$FS12T.done" ]; then
  log "making $FS12T (once)"
  rm -f "$FS12T"
  truncate -s 12T "$FS12T"
  mkfs.ext4 -q -F -U 9b0c4f8e-16a1-4c5d-8e2f-20000000012b -O 64bit,^resize_inode \
    -E lazy_itable_init=1,lazy_journal_init=1 "$FS12T" >/dev/null
  touch "$FS12T.done"
fi
bench "12T-empty -Q/e2image -Q" -- e2image -Q "$FS12T" "$WORK/a.qcow2"
bench "12T-empty -Q/e2i-capture -Q" -- "$E2I/e2i-capture" -Q "$FS12T" "$WORK/b.qcow2"
bench "12T-empty -Q/e2i-capture into e2i-to-qcow2 (a pipe)" -- sh -c \
  '"$1/e2i-capture" "$2" - | "$1/e2i-to-qcow2" - "$3"' sh "$E2I" "$FS12T" "$WORK/c.qcow2"
