#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test, then the
# end-to-end tests with the real reference Django and a headless Chromium.
#   scripts/test.sh              everything
#   scripts/test.sh --rust-only  skip the end-to-end tests
# It ends with a summary of what ran against which real services and what
# was skipped, also when a step fails: `cargo test` hides the output of
# passing tests, so the tests' own "SKIPPED …" lines never show.
# The first run compiles everything (clippy, the tests, the benches, the
# release binary for the end-to-end tests) before the first test result.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

rust_only=0
for arg in "$@"; do
  case "$arg" in
    --rust-only) rust_only=1 ;;
    *) echo "usage: scripts/test.sh [--rust-only]" >&2; exit 2 ;;
  esac
done

# ---- the closing summary ----
# Each step stores its outcome in outcome_<step>; `current` names the step
# running, which the summary calls FAILED when the script stops inside it.
current=""
begin() { current="$1"; }
finish() { printf -v "outcome_$1" '%s' "$2"; current=""; }
outcome_of() { local var="outcome_$1"; printf '%s' "${!var:-}"; }
# A step's outcome, or "not run" when the script stopped before it.
reached() { local text; text="$(outcome_of "$1")"; printf '%s' "${text:-not run}"; }
row() { printf '%-34s %s\n' "$1" "$2"; }
# A URL without its user and password.
redact() { printf '%s' "$1" | sed -E 's#^([A-Za-z][A-Za-z0-9+.-]*://)[^@/]*@#\1#'; }

# What the tests will find, decided the way they decide it:
# tests/common/postgres.rs (CHAT_TEST_POSTGRES_URL for the shared server;
# /usr/lib/postgresql/*/bin/pg_ctl for the fault tests' own clusters),
# tests/mongo_store.rs and tests/store_conformance.rs (MONGO_URI),
# benches/writer.rs (CHAT_BENCH_POSTGRES_URL, set below from the shared server).
pg_root=/usr/lib/postgresql
pg_bin=""
for dir in "$pg_root"/*/bin; do
  if [ -x "$dir/pg_ctl" ]; then pg_bin="$dir"; break; fi
done
pg_version=""
if [ -n "$pg_bin" ]; then
  pg_version="$("$pg_bin/postgres" --version 2>/dev/null | sed -E 's/^postgres \(PostgreSQL\) ([^ ]+).*/PostgreSQL \1/')" || true
fi
if [ "${CHAT_TEST_REQUIRE_POSTGRES:-}" = 1 ]; then
  pg_missing="MISSING, a failure under CHAT_TEST_REQUIRE_POSTGRES=1"
else
  pg_missing="SKIPPED"
fi
# Each service row: what its tests run against, or why they are skipped.
pg_shared=""   # conformance suite and tests/postgres_store.rs
pg_shared_skip="$pg_missing: PostgreSQL is not installed and CHAT_TEST_POSTGRES_URL is not set"
pg_own="" pg_own_note="" pg_own_skip=""   # tests/postgres_faults.rs, the sslmode test
if [ -n "$pg_bin" ]; then
  pg_own="throwaway clusters of their own (${pg_version:-PostgreSQL})"
  if [ ! -e /etc/ssl/private/ssl-cert-snakeoil.key ]; then
    pg_own_note="; the sslmode test SKIPPED: no snakeoil certificate (Debian's ssl-cert)"
  fi
else
  pg_own_skip="$pg_missing: no PostgreSQL server binaries in $pg_root (apt-get install postgresql)"
fi
if [ -n "${MONGO_URI:-}" ] && [ -n "$(printf '%s' "$MONGO_URI" | tr -d '[:space:]')" ]; then
  mongo_real="MONGO_URI ($(redact "$MONGO_URI"))"
  mongo_skip=""
else
  mongo_real=""
  mongo_skip="SKIPPED: MONGO_URI is not set (the wire-level tests against a scripted server ran instead)"
fi

postgres_dir=""
on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$postgres_dir" ]; then
    scripts/lib/postgres.sh stop "$postgres_dir/cluster" >/dev/null 2>&1
    rm -rf "$postgres_dir"
  fi
  if [ "$status" != 0 ] && [ -n "$current" ]; then
    case "$status" in
      130|143) finish "$current" "INTERRUPTED" ;;
      *) finish "$current" "FAILED (exit $status): see its output above" ;;
    esac
  fi
  # The PostgreSQL and MongoDB tests run inside `cargo test`: their rows
  # follow that step's outcome.
  local verb="" note="" pg_a pg_b mongo
  case "$(outcome_of rust)" in
    "") ;;
    ran*) verb="ran against" ;;
    *) verb="against"; note=" (in the step above, which did not pass)" ;;
  esac
  if [ -z "$verb" ]; then
    pg_a="not run"; pg_b="not run"; mongo="not run"
  else
    pg_a="${pg_shared:+$verb $pg_shared$note}"
    pg_a="${pg_a:-$pg_shared_skip}"
    pg_b="${pg_own:+$verb $pg_own$note$pg_own_note}"
    pg_b="${pg_b:-$pg_own_skip}"
    mongo="${mongo_real:+$verb $mongo_real$note}"
    mongo="${mongo:-$mongo_skip}"
  fi
  echo
  echo "== summary"
  if [ -n "$(outcome_of pg_start)" ] && [ "$(outcome_of pg_start)" != ran ]; then
    row "PostgreSQL throwaway cluster" "$(outcome_of pg_start)"
  fi
  row "cargo fmt" "$(reached fmt)"
  row "cargo clippy" "$(reached clippy)"
  row "deployment files (static)" "$(reached deploy)"
  row "Rust tests (cargo test)" "$(reached rust)"
  row "  PostgreSQL store" "$pg_a"
  row "  PostgreSQL fault tests" "$pg_b"
  row "  MongoDB store (real server)" "$mongo"
  row "real-binary tests on PostgreSQL" "$(reached second_pass)"
  row "benches (criterion test mode)" "$(reached benches)"
  row "end-to-end (Django, Chromium)" "$(reached e2e)"
  if [ "$status" = 0 ]; then echo "== all steps passed"; else echo "== FAILED (exit $status)"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# PostgreSQL: the store's conformance suite, its fault tests and a second
# pass of the real-binary tests run against a throwaway cluster started here
# (when PostgreSQL is installed and CHAT_TEST_POSTGRES_URL is not given);
# without one they print SKIPPED (.ci/run sets CHAT_TEST_REQUIRE_POSTGRES=1,
# which turns a skip into a failure).
if [ -z "${CHAT_TEST_POSTGRES_URL:-}" ] && [ -n "$pg_bin" ]; then
  begin pg_start
  postgres_dir="$(mktemp -d /tmp/chat-test-pg.XXXXXX)"
  chmod 711 "$postgres_dir"
  postgres_port="$(free_port)"
  echo "== PostgreSQL: throwaway cluster in $postgres_dir on port $postgres_port"
  CHAT_TEST_POSTGRES_URL="$(scripts/lib/postgres.sh start "$postgres_dir/cluster" "$postgres_port")"
  export CHAT_TEST_POSTGRES_URL
  pg_shared="a throwaway ${pg_version:-PostgreSQL} cluster on 127.0.0.1:$postgres_port"
  finish pg_start ran
elif [ -z "${CHAT_TEST_POSTGRES_URL:-}" ]; then
  echo "== PostgreSQL is not installed: its tests will print SKIPPED (apt-get install postgresql)"
else
  pg_server_version="$(PGCONNECT_TIMEOUT=3 psql "$CHAT_TEST_POSTGRES_URL" -qAtX -c 'SHOW server_version' 2>/dev/null)" || true
  pg_shared="CHAT_TEST_POSTGRES_URL ($(redact "$CHAT_TEST_POSTGRES_URL")${pg_server_version:+, PostgreSQL ${pg_server_version%% *}})"
fi

begin fmt
echo "== cargo fmt"
cargo fmt --all -- --check
finish fmt ran
begin clippy
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
finish clippy ran
begin deploy
echo "== deployment files (static)"; scripts/check_deploy.sh
if command -v systemd-analyze >/dev/null 2>&1; then
  finish deploy ran
else
  finish deploy "ran; systemd-analyze checks SKIPPED: systemd-analyze is not installed"
fi
begin rust
echo "== cargo test"
cargo test --workspace --locked
finish rust "ran (SQLite, in-memory store, MongoDB wire and Django stand-ins)"
begin second_pass
if [ -n "${CHAT_TEST_POSTGRES_URL:-}" ]; then
  echo "== the real-binary tests again, on PostgreSQL (a database per server)"
  CHAT_TEST_STORE=postgres cargo test --locked --test ws_protocol --test ws_checks \
    --test rest --test continuity --test read_state --test hardening
  finish second_pass "ran against the same server"
else
  finish second_pass "SKIPPED: no PostgreSQL server"
fi
begin benches
echo "== benches run once (criterion test mode; the writer bench on PostgreSQL too)"
CHAT_BENCH_POSTGRES_URL="${CHAT_TEST_POSTGRES_URL:-}" cargo test --workspace --locked --benches
if [ -n "${CHAT_TEST_POSTGRES_URL:-}" ]; then
  finish benches "ran (the writer bench on PostgreSQL too)"
else
  finish benches "ran (the writer bench on SQLite only: its PostgreSQL case SKIPPED, no server)"
fi

if [ "$rust_only" = 0 ]; then
  begin e2e
  echo "== end-to-end (real Django, release binary, headless Chromium)"
  scripts/e2e/run.sh
  finish e2e ran
else
  finish e2e "SKIPPED (--rust-only)"
fi
