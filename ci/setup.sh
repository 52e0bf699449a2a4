#!/usr/bin/env bash
# Install what the tests need when it is missing: e2fsprogs (e2image, mkfs, dumpe2fs,
# debugfs, e2fsck, e2undo), qemu-img, compressors, man/groff, script (pty), zsh and fish
# (completion tests), sfdisk, strace, GNU time (benchmarks), and the Rust components for
# fmt and clippy.
set -euo pipefail
need=()
command -v man >/dev/null || need+=(man-db) # tests render docs/man pages
command -v groff >/dev/null || need+=(groff-base)
command -v script >/dev/null || need+=(bsdutils) # tests run the tools under a pty
command -v zsh >/dev/null || need+=(zsh) # tests load the generated completions
command -v fish >/dev/null || need+=(fish)
command -v e2image >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v bzip2 >/dev/null || need+=(bzip2)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v sfdisk >/dev/null || need+=(fdisk) # partition tables on loop devices
command -v strace >/dev/null || need+=(strace) # install's kill-at-every-write test
[ -x /usr/bin/time ] || need+=(time) # ci/bench.sh: peak RSS
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true
