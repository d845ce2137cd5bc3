#!/usr/bin/env bash
# Set-up, formatting, lint and doc-link checks, build, and the whole test suite (what .ci/run calls). Release mode throughout,
# so the build is shared with launch/quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
# Broken or private intra-doc links fail too (the docs are part of the API).
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --lib
cargo build --release --all-targets
cargo test --release -- --test-threads=2
