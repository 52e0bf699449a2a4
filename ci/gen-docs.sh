#!/usr/bin/env bash
# Regenerate the man pages (docs/man/TOOL.1) and shell completions
# (docs/completions/{bash,zsh,fish}/) from the tools' clap definitions in bins/src/cli/.
# Usage: ci/gen-docs.sh [DIR]   (default: docs; DIR is relative to the repository root)
# The generated files are committed; a test (`cargo test docs`) fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p e2i-bins --example gen-docs -- "${1:-docs}"
