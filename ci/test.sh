#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (which include the
# differential corpus against e2image), and the e2fsprogs conformance subsets that pass.
# Usage: ci/test.sh          (from anywhere; needs e2fsprogs 1.47 and qemu-img)
set -euo pipefail
cd "$(dirname "$0")/.."
# Moves keep a journal index in the state folder: the suite's stay out of the user's.
XDG_STATE_HOME="$(mktemp -d)"
export XDG_STATE_HOME
trap 'rm -rf "$XDG_STATE_HOME"' EXIT
# Tests read e2fsprogs' messages (dumpe2fs, debugfs, e2fsck): untranslated, whatever the
# user's locale (character handling stays as it is).
unset LC_ALL LANGUAGE
export LC_MESSAGES=C
# Each step's seconds, listed at the end (where CI's time goes).
times=()
step() {
  local t=$SECONDS
  "$@"
  times+=("$((SECONDS - t)) s  $*")
}
step ci/setup.sh
step cargo fmt --all -- --check
step cargo clippy --release --all-targets -- -D warnings
step cargo build --release
step cargo test --release
# The library's unit tests again in a debug build: debug assertions on as well (the release
# profile has overflow checks too, see Cargo.toml).
step cargo test -p e2i --lib
# The fuzz targets (their own workspace: running them needs nightly, compiling them does not)
# must keep up with the library's API. Checked without libFuzzer itself (C++, only needed
# to link a fuzzer).
step cargo check --manifest-path fuzz/Cargo.toml --no-default-features
conf=../shared/conformance/run.sh
if [ -x "$conf" ] || [ -f "$conf" ]; then
  step bash "$conf" target/release "${E2I_CONFORMANCE_TAGS:-raw,normal,qcow2,pipeline,damaged}"
else
  echo "conformance suite not found at $conf; skipped" >&2
fi
printf 'ci/test.sh: %s\n' "${times[@]}" >&2
