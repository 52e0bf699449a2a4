# Recipes for `just` (`cargo install just`, or `pip install rust-just`); each runs one script.

# The whole test suite: fmt, clippy, build, tests (differential corpus included), conformance
test:
    ci/test.sh

# Full differential run: every corpus image (not only the quick set)
test-full:
    E2I_FULL_CORPUS=1 cargo test --release --test cli corpus

# e2i vs e2image timings and peak RSS (16 GiB / 200k files, 2 TiB empty)
bench:
    ci/bench.sh

# Generate the full test corpus into DIR
corpus dir="target/e2i-corpus/manual":
    testdata/gen-corpus.sh {{dir}}

# Regenerate the man pages and shell completions in docs/ from the clap definitions
man:
    ci/gen-docs.sh

# Install tools, man pages, completions under PREFIX (default /usr/local; DESTDIR stages)
install prefix=env_var_or_default("PREFIX", "/usr/local"):
    PREFIX={{prefix}} ci/install.sh

# The bundle maintainers ask for: scrambled qcow2 (xz), dumpe2fs -h, geometry, SHA256SUMS
bug-report device output="":
    cargo build --release -q
    scripts/e2i-bug-report {{device}} {{output}}
