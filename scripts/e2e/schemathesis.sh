#!/usr/bin/env bash
# schemathesis against the running e2e stack: every operation of the served
# $E2E_CHAT_URL/openapi.json, called as the demo mentor (a token from the real
# Django's token endpoint, as a frontend gets one) with generated valid and
# invalid inputs. Fails on any 5xx, any status, content type, header or body
# the document does not allow, and any other method not refused with 405 and
# `Allow`. Called by scripts/e2e/run.sh after the protocol scenario (so the
# mentor has conversations with messages to list); standalone, it needs the
# E2E_* variables run.sh exports and the e2e virtualenv.
#
# Environment: E2E_SCHEMATHESIS_EXAMPLES (examples per operation and phase,
# default 300), E2E_SCHEMATHESIS_SEED (replay a run), E2E_ARTIFACTS_DIR (its
# JUnit report).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

: "${E2E_CHAT_URL:?run through scripts/e2e/run.sh}"
: "${E2E_DJANGO_URL:?run through scripts/e2e/run.sh}"
: "${E2E_DEMO_JSON:?run through scripts/e2e/run.sh}"
REPORT_DIR="${E2E_ARTIFACTS_DIR:-$REPO_ROOT/artifacts}"
mkdir -p "$REPORT_DIR"

# The mentor sees both demo conversations; `waiting_since` is theirs to have.
read -r USER_ID TOKEN < <("$VENV_DIR/bin/python" - <<'PY'
import json, os, urllib.request
demo = json.load(open(os.environ["E2E_DEMO_JSON"]))
mentor = demo["users"]["mentor"]
request = urllib.request.Request(
    os.environ["E2E_DJANGO_URL"].rstrip("/") + "/api/token/",
    data=json.dumps({"username": "mentor", "password": mentor["password"]}).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=10) as response:
    print(mentor["id"], json.load(response)["access"])
PY
)

seed=()
[ -n "${E2E_SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$E2E_SCHEMATHESIS_SEED")
# Run from a scratch directory: no schemathesis.toml is picked up from the
# repository, and hypothesis keeps no example database in it.
cd "$(mktemp -d "${TMPDIR:-/tmp}/chat-schemathesis.XXXXXX")"
started=$SECONDS
status=0
"$VENV_DIR/bin/schemathesis" --no-color run "$E2E_CHAT_URL/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,ignored_auth \
    --header "Authorization: Bearer $TOKEN" --header "X-User-Id: $USER_ID" \
    --max-examples "${E2E_SCHEMATHESIS_EXAMPLES:-300}" "${seed[@]}" \
    --workers 2 --request-timeout 10 --generation-database none \
    --suppress-health-check too_slow \
    --report junit --report-junit-path "$REPORT_DIR/schemathesis.xml" || status=$?
rm -rf "$PWD"
echo "schemathesis: $((SECONDS - started)) s, exit $status"
exit "$status"
