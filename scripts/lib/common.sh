# Shared helpers for the scripts (dev.sh, test.sh, check_deploy.sh,
# e2e/run.sh): sourced, not run; they only define variables and functions.
# shellcheck shell=bash

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$SCRIPTS_DIR/.." && pwd)"
VENV_DIR="${CHAT_VENV_DIR:-$SCRIPTS_DIR/.venv}"
DJANGO_DIR="$SCRIPTS_DIR/django_backend"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    is_root || die "need $* but not root: install it (apt-get install $*) and retry"
    log "apt-get install $*"
    if [ -z "${APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Creates the virtualenv (installing python3-venv only when venv creation
# fails and we are root) and installs the pinned requirements; a stamp of the
# requirement files skips pip on a warm machine.
ensure_venv() {
    local req_files=("$@") stamp
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        log "creating virtualenv $VENV_DIR"
        if ! python3 -m venv "$VENV_DIR" 2>/dev/null; then
            rm -rf "$VENV_DIR"
            is_root || die "python3 -m venv failed; install python3-venv"
            apt_install python3-venv
            python3 -m venv "$VENV_DIR"
        fi
    fi
    # One stamp per set of requirement files (dev.sh and run.sh use different sets).
    stamp="$VENV_DIR/.installed-$(cat "${req_files[@]}" | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        log "installing Python requirements"
        local args=()
        for f in "${req_files[@]}"; do args+=(-r "$f"); done
        "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}"
        touch "$stamp"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS [PID]: until URL answers 2xx, the time runs out, or PID dies.
wait_http() {
    local url="$1" deadline=$((SECONDS + $2)) pid="${3:-}"
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited while waiting for $url"
            return 1
        fi
        [ "$SECONDS" -lt "$deadline" ] || { log "timed out waiting for $url"; return 1; }
        sleep 0.2
    done
}

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
}

# Builds chat-service with cargo profile $1 (default `release`; dev.sh uses
# `local`: no LTO, incremental) unless CHAT_SERVICE_BIN names a binary.
build_chat_service() {
    local profile="${1:-release}"
    if [ -n "${CHAT_SERVICE_BIN:-}" ]; then
        [ -x "$CHAT_SERVICE_BIN" ] || die "CHAT_SERVICE_BIN=$CHAT_SERVICE_BIN is not executable"
        return
    fi
    ensure_cargo
    log "cargo build --profile $profile --locked (chat-service)"
    (cd "$REPO_ROOT" && cargo build --profile "$profile" --locked --bin chat-service)
    CHAT_SERVICE_BIN="$REPO_ROOT/target/$profile/chat-service"
}

# Stops the processes whose ids are in STARTED_PIDS: TERM, then KILL after 5 s.
STARTED_PIDS=()
stop_started() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${STARTED_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${STARTED_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

django_manage() {
    (cd "$DJANGO_DIR" && "$VENV_DIR/bin/python" manage.py "$@")
}
