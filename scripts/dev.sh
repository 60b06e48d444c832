#!/usr/bin/env bash
# One command for the whole dev stack: reference Django backend + chat-service
# on loopback, demo data seeded. Ctrl-C stops both.
#
# Environment: DJANGO_PORT (8000), CHAT_PORT (8080), CHAT_DATA_DIR (./data),
# CHAT_SERVICE_BIN (skip the cargo build and run this binary instead).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DJANGO_PORT="${DJANGO_PORT:-8000}"
CHAT_PORT="${CHAT_PORT:-8080}"
DATA_DIR="${CHAT_DATA_DIR:-$REPO_ROOT/data}"
DJANGO_URL="http://127.0.0.1:$DJANGO_PORT"
export CHAT_SERVICE_URL="http://127.0.0.1:$CHAT_PORT"

ensure_venv "$DJANGO_DIR/requirements.txt"
log "migrating and seeding the Django database"
django_manage migrate -v0
build_chat_service
mkdir -p "$DATA_DIR"

trap 'trap - EXIT INT TERM; log "stopping"; stop_started' EXIT INT TERM

PORT="$CHAT_PORT" CHAT_BIND=127.0.0.1 DJANGO_BASE_URL="$DJANGO_URL" CHAT_DATA_DIR="$DATA_DIR" \
    "$CHAT_SERVICE_BIN" &
STARTED_PIDS+=($!)
"$VENV_DIR/bin/python" "$DJANGO_DIR/manage.py" runserver --noreload "127.0.0.1:$DJANGO_PORT" &
STARTED_PIDS+=($!)

wait_http "$DJANGO_URL/" 60 "${STARTED_PIDS[1]}" || exit 1
wait_http "$CHAT_SERVICE_URL/healthz" 60 "${STARTED_PIDS[0]}" || exit 1

django_manage seed_demo
cat <<MSG

  Open $DJANGO_URL/ in two browser windows (one private) and log in as
  mentor / mentor-pass and alice / alice-pass (or bob / bob-pass).
  chat-service: $CHAT_SERVICE_URL (store in $DATA_DIR), Django admin: $DJANGO_URL/admin/
  Ctrl-C stops both.

MSG
# Whichever exits first ends the stack; the trap stops the other.
wait -n
