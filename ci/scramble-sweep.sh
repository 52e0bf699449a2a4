#!/usr/bin/env bash
# Scrambling against e2fsprogs' own test images (most deliberately damaged): for every image,
# `e2i-capture -r -s` must not crash, must fail only where `-r` fails, and the scrambled raw
# image must get the same e2fsck -fn exit status as the unscrambled one.
# Usage: ci/scramble-sweep.sh [BIN_DIR [IMAGE_DIR]]   (prints one line per difference)
set -uo pipefail
bin=$(cd "${1:-target/release}" && pwd) || exit 2
imgs=${2:-$(dirname "$0")/../../shared/conformance/e2fsprogs-tests}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
same=0; differ=0; crash=0; failed=0; total=0
for gz in "$imgs"/*.img.gz; do
  n=$(basename "$gz" .img.gz); total=$((total+1))
  gunzip -c "$gz" > "$work/img" 2>/dev/null
  timeout 120 "$bin/e2i-capture" -r "$work/img" "$work/plain.raw" >/dev/null 2>&1; p=$?
  timeout 120 "$bin/e2i-capture" -r -s "$work/img" "$work/scr.raw" >/dev/null 2>"$work/err"; s=$?
  if grep -q panicked "$work/err" || [ $s -gt 3 ]; then
    crash=$((crash+1)); echo "CRASH $n: exit $s: $(tail -n 1 "$work/err")"; continue
  fi
  if [ $p -ne 0 ] && [ $p -ne 3 ]; then
    failed=$((failed+1))
    [ $s -ne $p ] && { differ=$((differ+1)); echo "EXIT $n: -r $p, -r -s $s"; }
    continue
  fi
  a=$(timeout 120 e2fsck -fn "$work/plain.raw" >/dev/null 2>&1; echo $?)
  b=$(timeout 120 e2fsck -fn "$work/scr.raw" >/dev/null 2>&1; echo $?)
  if [ "$a" = "$b" ]; then same=$((same+1)); else differ=$((differ+1)); echo "VERDICT $n: e2fsck $a unscrambled, $b scrambled"; fi
done
echo "$total images: $same same e2fsck verdict, $differ different, $failed not capturable, $crash crashes"
[ $differ -eq 0 ] && [ $crash -eq 0 ]
