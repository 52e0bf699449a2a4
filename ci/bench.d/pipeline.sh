# Pipeline benchmarks (issue 5): the stream through a pipe into a qcow2 written to a pipe,
# against e2image's only pipe-able output (a raw image with every hole as zeros), and
# against e2image -Q to a file. Sourced by ci/bench.sh (see README.md here).
n=$(basename "$FS16" .img)
bench "$n pipe/e2image -r - (into cat)" -- sh -c 'e2image -r "$1" - 2>/dev/null | cat > /dev/null' _ "$FS16"
bench "$n pipe/e2image -Q (file)" -- e2image -Q "$FS16" "$WORK/a.qcow2"
bench "$n pipe/e2i-capture into e2i-to-qcow2 - - (a pipe)" -- sh -c '"$1/e2i-capture" "$2" | "$1/e2i-to-qcow2" - - > "$3"' _ "$E2I" "$FS16" "$WORK/b.qcow2"
bench "$n pipe/e2i-capture into e2i-to-raw - FILE (a pipe)" -- sh -c '"$1/e2i-capture" "$2" | "$1/e2i-to-raw" - "$3"' _ "$E2I" "$FS16" "$WORK/c.raw"
