#!/usr/bin/env bash
# Regenerates sample.ext4: a 768 KiB ext4 filesystem (1 KiB blocks, no journal) with a few
# files, a directory, a symlink and an xattr, made deterministic with a fixed UUID, hash
# seed and time. Committed so the README's quick start needs nothing but cargo.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tree/docs/notes" "$tmp/tree/src"
for i in $(seq 1 20); do printf 'note %d\n' "$i" > "$tmp/tree/docs/notes/n$i.txt"; done
printf 'fn main() {}\n' > "$tmp/tree/src/main.rs"
seq 1 20000 > "$tmp/tree/numbers.txt"
ln -s docs/notes/n1.txt "$tmp/tree/first-note"
ln -s "$(printf 'long/%.0s' $(seq 1 20))target" "$tmp/tree/long-link"
export E2FSPROGS_FAKE_TIME=1700000000
rm -f sample.ext4
mkfs.ext4 -q -F -b 1024 -O ^has_journal -N 64 -L sample \
  -U 6f1d3c52-7a0e-4b8e-9a53-0c4b9f2e1a01 -E hash_seed=0b6e7c1a-2d3f-4e5a-8b9c-1d2e3f4a5b6c \
  -d "$tmp/tree" sample.ext4 768K
