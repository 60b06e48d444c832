#!/usr/bin/env bash
# End-to-end tests: the real reference Django + the real chat-service release
# binary on free loopback ports, then (a) the protocol scenario (pytest, with
# every status docs/openapi.json documents), (b) schemathesis against the
# served OpenAPI document and (c) the browser test (playwright-core driving
# Debian's chromium).
# Works on a fresh Debian machine as root; exits non-zero on any failure.
#
# Environment: CHAT_SERVICE_BIN (skip the cargo build), CHROMIUM_BIN
# (/usr/bin/chromium), E2E_ARTIFACTS_DIR (<repo>/artifacts).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

E2E_DIR="$SCRIPTS_DIR/e2e"
BROWSER_DIR="$E2E_DIR/browser"
export E2E_ARTIFACTS_DIR="${E2E_ARTIFACTS_DIR:-$REPO_ROOT/artifacts}"
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
STARTED_AT=$SECONDS

# ---- prerequisites (each step is skipped when already done) ----
[ -x "$CHROMIUM_BIN" ] || apt_install chromium
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
command -v curl >/dev/null 2>&1 || apt_install curl
ensure_venv "$DJANGO_DIR/requirements.txt" "$E2E_DIR/requirements.txt"
if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ] ||
    ! cmp -s "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.package-lock.json.copy"; then
    log "npm ci (playwright-core; no browser download: Debian's chromium is used)"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    cp "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.package-lock.json.copy"
fi
build_chat_service
mkdir -p "$E2E_ARTIFACTS_DIR"

# ---- the stack, on free loopback ports, state in a temp dir ----
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chat-e2e.XXXXXX")"
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_started
    mkdir -p "$E2E_ARTIFACTS_DIR/e2e-logs"
    cp "$WORK"/*.log "$E2E_ARTIFACTS_DIR/e2e-logs/" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DJANGO_PORT="$(free_port)"
CHAT_PORT="$(free_port)"
while [ "$CHAT_PORT" = "$DJANGO_PORT" ]; do CHAT_PORT="$(free_port)"; done
# A second chat-service whose Django address has nothing listening (every
# authenticated call is a Django outage) and which allows one WebSocket
# origin: the documented 503s and the origin 403 (test_openapi_statuses.py).
DEGRADED_PORT="$(free_port)"
NO_DJANGO_PORT="$(free_port)"
while [ "$DEGRADED_PORT" = "$DJANGO_PORT" ] || [ "$DEGRADED_PORT" = "$CHAT_PORT" ]; do DEGRADED_PORT="$(free_port)"; done
while [ "$NO_DJANGO_PORT" = "$DJANGO_PORT" ] || [ "$NO_DJANGO_PORT" = "$CHAT_PORT" ] ||
    [ "$NO_DJANGO_PORT" = "$DEGRADED_PORT" ]; do NO_DJANGO_PORT="$(free_port)"; done
export E2E_DJANGO_URL="http://127.0.0.1:$DJANGO_PORT"
export E2E_CHAT_URL="http://127.0.0.1:$CHAT_PORT"
export E2E_DEGRADED_CHAT_URL="http://127.0.0.1:$DEGRADED_PORT"
export E2E_DEMO_JSON="$WORK/demo.json"
export E2E_DJANGO_SECRET_KEY="e2e-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export DJANGO_SECRET_KEY="$E2E_DJANGO_SECRET_KEY"
export DJANGO_DB_PATH="$WORK/django.sqlite3"
export CHAT_SERVICE_URL="$E2E_CHAT_URL"
# Small, so the browser test can miss more messages than a reconnect replays.
export E2E_RECOVERY_MAX=20

log "Django on $E2E_DJANGO_URL, chat-service on $E2E_CHAT_URL, state in $WORK"
django_manage migrate -v0
django_manage seed_demo --json >"$E2E_DEMO_JSON"
# A user enrolled nowhere, to be refused the lesson.
django_manage shell -c "from learning.models import User
u, _ = User.objects.get_or_create(username='outsider')
u.set_password('outsider-pass'); u.save()"

"$VENV_DIR/bin/python" "$DJANGO_DIR/manage.py" runserver --noreload "127.0.0.1:$DJANGO_PORT" \
    >"$WORK/django.log" 2>&1 &
STARTED_PIDS+=($!)
PORT="$CHAT_PORT" CHAT_BIND=127.0.0.1 DJANGO_BASE_URL="$E2E_DJANGO_URL" CHAT_DATA_DIR="$WORK/chat-data" \
    CHAT_RECOVERY_MAX="$E2E_RECOVERY_MAX" \
    CHAT_LOG="${CHAT_LOG:-info}" "$CHAT_SERVICE_BIN" >"$WORK/chat-service.log" 2>&1 &
STARTED_PIDS+=($!)
PORT="$DEGRADED_PORT" CHAT_BIND=127.0.0.1 DJANGO_BASE_URL="http://127.0.0.1:$NO_DJANGO_PORT" \
    CHAT_DATA_DIR="$WORK/chat-degraded-data" CHAT_ALLOWED_ORIGINS="http://allowed.invalid" \
    CHAT_LOG="${CHAT_LOG:-info}" "$CHAT_SERVICE_BIN" >"$WORK/chat-service-degraded.log" 2>&1 &
STARTED_PIDS+=($!)
wait_http "$E2E_DJANGO_URL/" 60 "${STARTED_PIDS[0]}" || { tail -n 30 "$WORK/django.log" >&2; exit 1; }
wait_http "$E2E_CHAT_URL/healthz" 60 "${STARTED_PIDS[1]}" || { tail -n 30 "$WORK/chat-service.log" >&2; exit 1; }
wait_http "$E2E_DEGRADED_CHAT_URL/healthz" 60 "${STARTED_PIDS[2]}" ||
    { tail -n 30 "$WORK/chat-service-degraded.log" >&2; exit 1; }

# ---- (a) protocol scenario, (b) schemathesis, (c) browser; all run, any failing fails the script ----
protocol_status=0
log "protocol scenario (pytest)"
timeout 300 "$VENV_DIR/bin/python" -m pytest "$E2E_DIR/protocol" -q -p no:cacheprovider --color=no \
    --junitxml="$WORK/pytest.xml" || protocol_status=$?

schemathesis_status=0
log "schemathesis against $E2E_CHAT_URL/openapi.json"
timeout 180 "$E2E_DIR/schemathesis.sh" || schemathesis_status=$?

browser_status=0
log "browser test (playwright-core + $CHROMIUM_BIN)"
timeout 200 node "$BROWSER_DIR/chat.e2e.mjs" || browser_status=$?
if [ "$browser_status" -ne 0 ] && [ "$browser_status" -ne 1 ]; then
    echo "browser: 0 passed, 1 failed"  # killed by the timeout or crashed before its summary
fi

# One closing line over the runners: pytest's tests (from its JUnit XML; an
# unreadable report counts as one failure), schemathesis and the browser test
# (one each).
read -r passed failed < <(python3 - "$WORK/pytest.xml" "$protocol_status" "$browser_status" "$schemathesis_status" <<'PY'
import sys, xml.etree.ElementTree as ET
path, protocol, browser, schemathesis = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, bad = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    passed, failed = total - bad - int(suite.get("skipped")), bad
    if protocol and not failed:
        failed = 1
except Exception:
    passed, failed = 0, 1
for status in (schemathesis, browser):
    if status:
        failed += 1
    else:
        passed += 1
print(passed, failed)
PY
)
echo
echo "e2e: protocol $([ $protocol_status = 0 ] && echo ok || echo "FAILED ($protocol_status)"), schemathesis $([ $schemathesis_status = 0 ] && echo ok || echo "FAILED ($schemathesis_status)"), browser $([ $browser_status = 0 ] && echo ok || echo "FAILED ($browser_status)"), $((SECONDS - STARTED_AT)) s; screenshot and logs in $E2E_ARTIFACTS_DIR"
echo "e2e: $passed passed, $failed failed"
[ "$protocol_status" = 0 ] && [ "$schemathesis_status" = 0 ] && [ "$browser_status" = 0 ]
