#!/usr/bin/env bash
# Install the e2i tools, scripts/e2i-bug-report, the man pages, the documents they cite
# (README.md and docs/*.md into PREFIX/share/doc/e2i) and the shell completions.
# Usage: [PREFIX=/usr/local] [DESTDIR=/staging] [E2I_BIN=dir] ci/install.sh
#   PREFIX   installation prefix (default /usr/local)
#   DESTDIR  staging root prepended to every path (packaging)
#   E2I_BIN  directory of already-built binaries (default: build target/release now)
# Layout: PREFIX/bin, PREFIX/share/man/man1, PREFIX/share/bash-completion/completions,
# PREFIX/share/zsh/site-functions, PREFIX/share/fish/vendor_completions.d, PREFIX/share/doc/e2i.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
root=${DESTDIR:-}$prefix
bin=${E2I_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q
  bin=target/release
fi
tools=(e2i-capture e2i-to-raw e2i-to-qcow2 qcow2-to-raw e2i-install e2i-move)
man=$root/share/man/man1
bash_d=$root/share/bash-completion/completions
zsh_d=$root/share/zsh/site-functions
fish_d=$root/share/fish/vendor_completions.d
doc=$root/share/doc/e2i
install -d "$root/bin" "$man" "$bash_d" "$zsh_d" "$fish_d" "$doc"
for t in "${tools[@]}"; do
  [ -x "$bin/$t" ] || { echo "install.sh: $bin/$t: not built" >&2; exit 1; }
  install -m 755 "$bin/$t" "$root/bin/$t"
  install -m 644 "docs/man/$t.1" "$man/$t.1"
  install -m 644 "docs/completions/bash/$t.bash" "$bash_d/$t"
  install -m 644 "docs/completions/zsh/_$t" "$zsh_d/_$t"
  install -m 644 "docs/completions/fish/$t.fish" "$fish_d/$t.fish"
done
install -m 755 scripts/e2i-bug-report "$root/bin/e2i-bug-report"
install -m 644 docs/man/e2i-bug-report.1 "$man/e2i-bug-report.1"
# The documents the man pages cite.
install -m 644 README.md docs/*.md "$doc/"
echo "installed ${#tools[@]} tools, e2i-bug-report, man pages, documents and completions under $root"
