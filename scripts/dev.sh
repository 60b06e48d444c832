#!/usr/bin/env bash
# One command for the whole dev stack: reference Django backend + chat-service
# on loopback, demo data seeded. Ctrl-C stops both.
#
#   scripts/dev.sh              chat-service on the embedded SQLite store
#   scripts/dev.sh --postgres   on PostgreSQL: CHAT_POSTGRES_URL if set, else a
#                               local cluster in $CHAT_DATA_DIR/postgres (needs
#                               Debian's postgresql package), started and stopped here
#
# Environment: DJANGO_PORT (8000), CHAT_PORT (8080), CHAT_DATA_DIR (./data),
# CHAT_SERVICE_BIN (skip the cargo build and run this binary instead),
# DEV_POSTGRES_PORT (55440, for the local cluster).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

use_postgres=0
for arg in "$@"; do
  case "$arg" in
    --postgres) use_postgres=1 ;;
    *) echo "usage: scripts/dev.sh [--postgres]" >&2; exit 2 ;;
  esac
done

DJANGO_PORT="${DJANGO_PORT:-8000}"
CHAT_PORT="${CHAT_PORT:-8080}"
DATA_DIR="${CHAT_DATA_DIR:-$REPO_ROOT/data}"
DJANGO_URL="http://127.0.0.1:$DJANGO_PORT"
export CHAT_SERVICE_URL="http://127.0.0.1:$CHAT_PORT"

# Said before anything slow: a cold build prints nothing useful for minutes.
if [ -n "${CHAT_SERVICE_BIN:-}" ]; then
  log "dev stack: Django on $DJANGO_URL, chat-service ($CHAT_SERVICE_BIN, no build) on $CHAT_SERVICE_URL"
else
  log "dev stack: the first run builds chat-service (cargo build --profile local: about 4 minutes on 2 cores) before anything starts; a rebuild after an edit takes about 40 s"
fi
ensure_venv "$DJANGO_DIR/requirements.txt"
log "migrating and seeding the Django database"
django_manage migrate -v0
# The `local` profile (Cargo.toml): optimized, no LTO, incremental.
build_chat_service local
mkdir -p "$DATA_DIR"

postgres_cluster=""
if [ "$use_postgres" = 1 ] && [ -z "${CHAT_POSTGRES_URL:-}" ]; then
  postgres_cluster="$DATA_DIR/postgres"
  log "starting a local PostgreSQL cluster in $postgres_cluster"
  # The cluster runs as the postgres user, who must reach its directory.
  chmod 711 "$DATA_DIR"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DATA_DIR"; then
    echo "dev.sh: the postgres user cannot reach $DATA_DIR; set CHAT_DATA_DIR to a directory it can (e.g. under /var/tmp)" >&2
    exit 1
  fi
  CHAT_POSTGRES_URL="$(POSTGRES_DURABLE=1 "$REPO_ROOT/scripts/lib/postgres.sh" start "$postgres_cluster" "${DEV_POSTGRES_PORT:-55440}")"
fi
if [ "$use_postgres" = 1 ]; then
  export CHAT_POSTGRES_URL
  store_text="PostgreSQL at $CHAT_POSTGRES_URL"
else
  store_text="store in $DATA_DIR"
fi

stop_all() {
  stop_started
  if [ -n "$postgres_cluster" ]; then "$REPO_ROOT/scripts/lib/postgres.sh" stop "$postgres_cluster" || true; fi
}
trap 'trap - EXIT INT TERM; log "stopping"; stop_all' EXIT INT TERM

PORT="$CHAT_PORT" CHAT_BIND=127.0.0.1 DJANGO_BASE_URL="$DJANGO_URL" CHAT_DATA_DIR="$DATA_DIR" \
    "$CHAT_SERVICE_BIN" &
STARTED_PIDS+=($!)
"$VENV_DIR/bin/python" "$DJANGO_DIR/manage.py" runserver --noreload "127.0.0.1:$DJANGO_PORT" &
STARTED_PIDS+=($!)

wait_http "$DJANGO_URL/" 60 "${STARTED_PIDS[1]}" || exit 1
wait_http "$CHAT_SERVICE_URL/healthz" 60 "${STARTED_PIDS[0]}" || exit 1

django_manage seed_demo
cat <<MSG

  Chat page (served by the reference Django): $DJANGO_URL/
  Open it in two browser windows (one private) and log in as
  mentor / mentor-pass and alice / alice-pass (or bob / bob-pass).
  chat-service: $CHAT_SERVICE_URL/ (an index of its endpoints, not a chat
  page; $store_text). Django admin: $DJANGO_URL/admin/
  Ctrl-C stops both.

MSG
# Whichever exits first ends the stack; the trap stops the other.
wait -n
