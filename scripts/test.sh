#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test, then the
# end-to-end tests with the real reference Django and a headless Chromium.
#   scripts/test.sh              everything
#   scripts/test.sh --rust-only  skip the end-to-end tests
set -euo pipefail
cd "$(dirname "$0")/.."

rust_only=0
for arg in "$@"; do
  case "$arg" in
    --rust-only) rust_only=1 ;;
    *) echo "usage: scripts/test.sh [--rust-only]" >&2; exit 2 ;;
  esac
done

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== benches run once (criterion test mode)"
cargo test --workspace --locked --benches

if [ "$rust_only" = 0 ]; then
  echo "== end-to-end (real Django, release binary, headless Chromium)"
  scripts/e2e/run.sh
fi
