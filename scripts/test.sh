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

# PostgreSQL: the store's conformance suite, its fault tests and a second
# pass of the real-binary tests run against a throwaway cluster started here
# (when PostgreSQL is installed and CHAT_TEST_POSTGRES_URL is not given);
# without one they print SKIPPED (.ci/run sets CHAT_TEST_REQUIRE_POSTGRES=1,
# which turns a skip into a failure).
postgres_dir=""
if [ -z "${CHAT_TEST_POSTGRES_URL:-}" ] && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  postgres_dir="$(mktemp -d /tmp/chat-test-pg.XXXXXX)"
  chmod 711 "$postgres_dir"
  postgres_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  echo "== PostgreSQL: throwaway cluster in $postgres_dir on port $postgres_port"
  CHAT_TEST_POSTGRES_URL="$(scripts/lib/postgres.sh start "$postgres_dir/cluster" "$postgres_port")"
  export CHAT_TEST_POSTGRES_URL
  trap 'scripts/lib/postgres.sh stop "$postgres_dir/cluster" || true; rm -rf "$postgres_dir"' EXIT
elif [ -z "${CHAT_TEST_POSTGRES_URL:-}" ]; then
  echo "== PostgreSQL is not installed: its tests will print SKIPPED (apt-get install postgresql)"
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
if [ -n "${CHAT_TEST_POSTGRES_URL:-}" ]; then
  echo "== the real-binary tests again, on PostgreSQL (a database per server)"
  CHAT_TEST_STORE=postgres cargo test --locked --test ws_protocol --test ws_checks \
    --test rest --test continuity --test read_state --test hardening
fi
echo "== benches run once (criterion test mode; the writer bench on PostgreSQL too)"
CHAT_BENCH_POSTGRES_URL="${CHAT_TEST_POSTGRES_URL:-}" cargo test --workspace --locked --benches

if [ "$rust_only" = 0 ]; then
  echo "== end-to-end (real Django, release binary, headless Chromium)"
  scripts/e2e/run.sh
fi
