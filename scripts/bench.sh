#!/usr/bin/env bash
# Standard benchmarks for chat-service: builds release, runs the service on the
# embedded store against the Django stand-in, runs the scenarios with the load
# generator, and (re)writes BENCHMARKS.md at the repository root.
#
#   scripts/bench.sh                  the five standard scenarios and the latency knee
#                                     (about 9 minutes plus the builds)
#   scripts/bench.sh --quick          the same scenarios at small sizes (about 1 minute)
#   scripts/bench.sh --only idle,storm   a subset: idle, throughput, latency, knee, storm, persistence
#   scripts/bench.sh --no-build       use the binaries already in target/release
#                                     (persistence still compiles its criterion bench)
#   scripts/bench.sh --out FILE       write the report elsewhere
#   scripts/bench.sh --postgres URL   also the throughput scenario and the writer bench on
#                                     PostgreSQL (URL of a server whose schema "chat" it may
#                                     drop; e.g. POSTGRES_DURABLE=1 scripts/lib/postgres.sh start DIR)
#   scripts/bench.sh --server ceiling the same load against the bare reference relay
#                                     (../shared/ceiling/run.sh; no stand-in; idle, throughput,
#                                     latency, knee; report to /tmp/BENCHMARKS-ceiling.md)
#
# BENCH_SERVICE_BIN runs another chat-service binary (e.g. an older commit's);
# BENCH_CHAT_LOG its log filter (default warn).
# Needs only cargo, curl and coreutils. Ports: BENCH_PORT (18480) for the service,
# BENCH_STANDIN_PORT (18481) for the stand-in. Every process it starts is stopped
# on exit; each step is bounded (the generator stops by itself, `timeout` backs it up).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
BUILD=1
ONLY=""
OUT=""
SERVER=chat-service
POSTGRES_URL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --server) SERVER="$2"; shift ;;
    --postgres) POSTGRES_URL="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# --server ceiling: the bare relay (every token accepted, nothing stored, no Django)
# under the same load, to report chat-service as a fraction of it. Storm (counts Django
# calls) and persistence (chat-service's writer) do not apply to it.
case $SERVER in
  chat-service)
    ONLY=${ONLY:-idle,throughput,latency,knee,storm,persistence}
    if [ -n "$POSTGRES_URL" ]; then ONLY="$ONLY,throughput_postgres"; fi
    OUT=${OUT:-$ROOT/BENCHMARKS.md} ;;
  ceiling)
    CEILING_RUN=${BENCH_CEILING_RUN:-$ROOT/../shared/ceiling/run.sh}
    ONLY=${ONLY:-idle,throughput,latency,knee}; OUT=${OUT:-${TMPDIR:-/tmp}/BENCHMARKS-ceiling.md}
    case ",$ONLY," in *,storm,*|*,persistence,*) echo "bench.sh: storm and persistence do not apply to --server ceiling" >&2; exit 2 ;; esac
    [ -x "$CEILING_RUN" ] || { echo "bench.sh: $CEILING_RUN missing (set BENCH_CEILING_RUN)" >&2; exit 1; } ;;
  *) echo "bench.sh: --server chat-service|ceiling, not $SERVER" >&2; exit 2 ;;
esac

PORT_SERVICE=${BENCH_PORT:-18480}
PORT_STANDIN=${BENCH_STANDIN_PORT:-18481}
BIN="$ROOT/target/release"
# Another build of the service under the same load (e.g. a copy of an older
# commit's binary, to measure what a change costs).
SERVICE_BIN=${BENCH_SERVICE_BIN:-$BIN/chat-service}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-bench.XXXXXX")
SERVER_PID=""
STANDIN_PID=""

stop() { # pid: TERM, then KILL after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$SERVER_PID"; SERVER_PID=""
  stop "$STANDIN_PID"; STANDIN_PID=""
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT_SERVICE" "$PORT_STANDIN"; do
  if port_busy "$p"; then echo "bench.sh: port $p is in use (set BENCH_PORT / BENCH_STANDIN_PORT)" >&2; exit 1; fi
done

if [ "$BUILD" = 1 ]; then
  echo "== building release" >&2
  cargo build --release --locked -p chat-service -p loadtest --bins >&2
fi
BINS="chat-service loadtest django-standin"; [ "$SERVER" = ceiling ] && BINS=loadtest
for b in $BINS; do
  [ -x "$BIN/$b" ] || { echo "bench.sh: $BIN/$b missing (run without --no-build)" >&2; exit 1; }
done

start_standin() {
  "$BIN/django-standin" --listen "127.0.0.1:$PORT_STANDIN" --duration 1800 >"$WORK/standin.log" 2>&1 &
  STANDIN_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/standin.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench.sh: the Django stand-in did not start" >&2; cat "$WORK/standin.log" >&2; exit 1
}

SCENARIO_STORE=sqlite
start_server() { # a fresh service and store for each scenario, so RSS starts from the same point
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  local store_env=()
  if [ "$SCENARIO_STORE" = postgres ]; then
    psql "$POSTGRES_URL" -qX -c 'DROP SCHEMA IF EXISTS chat CASCADE' >/dev/null 2>&1
    store_env=(CHAT_POSTGRES_URL="$POSTGRES_URL")
  fi
  local tries=150
  if [ "$SERVER" = ceiling ]; then # run.sh builds if needed (~35 s the first time), then execs the relay
    "$CEILING_RUN" "$PORT_SERVICE" "http://127.0.0.1:1" >>"$WORK/server.log" 2>&1 &
    tries=1200
  else
    PORT=$PORT_SERVICE CHAT_BIND=127.0.0.1 DJANGO_BASE_URL="http://127.0.0.1:$PORT_STANDIN" \
      CHAT_DATA_DIR="$WORK/data" CHAT_LOG="${BENCH_CHAT_LOG:-warn}" env "${store_env[@]}" "$SERVICE_BIN" >>"$WORK/server.log" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq "$tries"); do
    curl -sf "http://127.0.0.1:$PORT_SERVICE/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: $SERVER did not become healthy" >&2; tail -20 "$WORK/server.log" >&2; exit 1
}

stop_server() { stop "$SERVER_PID"; SERVER_PID=""; }

if [ "$QUICK" = 1 ]; then
  IDLE_PAIRS=1000; IDLE_HOLD=5; LOAD_PAIRS=500; LOAD_SECS=5; LAT_RATE=2000; KNEE_RATE=500; STORM_PAIRS=500
else
  IDLE_PAIRS=9500; IDLE_HOLD=60; LOAD_PAIRS=5000; LOAD_SECS=30; LAT_RATE=20000; KNEE_RATE=5000; STORM_PAIRS=2500
fi
TARGET="--target 127.0.0.1:$PORT_SERVICE"

SECTIONS="$WORK/sections.md"
: >"$SECTIONS"
SUMMARY="$WORK/summary.md"
: >"$SUMMARY"

# scenario NAME TITLE TARGET-TEXT LOADTEST-ARGS...
scenario() {
  local name=$1 title=$2 goal=$3; shift 3
  case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  echo "== $title" >&2
  start_server
  local cmd=("$BIN/loadtest" $TARGET --server-pid "$SERVER_PID" --label "$title" \
             --json "$WORK/$name.json" --markdown "$WORK/$name.md" "$@")
  local rc=0
  # The generator bounds itself; timeout is the backstop.
  timeout --kill-after=10 600 "${cmd[@]}" >"$WORK/$name.txt" 2>"$WORK/$name.err" || rc=$?
  cat "$WORK/$name.txt" >&2
  stop_server
  local verdict
  case $rc in 0) verdict="PASS" ;; 1) verdict="**FAIL**" ;; *) verdict="**ERROR** (exit $rc)" ;; esac
  echo "| $title | $goal | $verdict |" >>"$SUMMARY"
  {
    echo "## $title"
    echo
    echo "Target: $goal"
    echo
    echo '```sh'
    # The command as run, with the generated pid and paths made generic.
    echo "${cmd[*]}" | sed -E -e "s|$BIN/|target/release/|" -e 's/--server-pid [0-9]+/--server-pid $SERVER_PID/' \
      -e "s|$WORK/|/tmp/|g"
    echo '```'
    echo
    if [ -s "$WORK/$name.md" ]; then cat "$WORK/$name.md"; else echo "(no report)"; tail -5 "$WORK/$name.err" | sed 's/^/    /'; fi
    echo
    echo '<details><summary>generator output</summary>'
    echo
    echo '```'
    cat "$WORK/$name.txt"
    echo '```'
    echo '</details>'
    echo
  } >>"$SECTIONS"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
[ "$SERVER" = ceiling ] || start_standin

scenario idle "Idle capacity" \
  "$((IDLE_PAIRS * 2)) connections held ${IDLE_HOLD} s; server RSS growth ≤ 6 KiB/connection; zero failed" \
  --pairs "$IDLE_PAIRS" --procs 2 --rate idle --duration "$IDLE_HOLD" --ramp-rate 4000 --connect-timeout 60 \
  --expect connections_failed==0 --expect server_closes==0 --expect 'server_rss_growth_per_conn_kib<=6'

scenario throughput "Throughput" \
  "$LOAD_PAIRS pairs as fast as possible for ${LOAD_SECS} s; ≥ 200,000 delivered/s; zero lost" \
  --pairs "$LOAD_PAIRS" --rate max --window 8 --duration "$LOAD_SECS" --ramp-rate 4000 --drain-timeout 15 \
  --expect connections_failed==0 --expect 'delivered_per_s>=200000' --expect lost==0 --expect refused==0 --expect unacked==0


# The latency targets (issue 13, delivery after durability): at the standard
# rate p99 ≤ 2 ms and p99.9 ≤ 20 ms; below saturation p99 ≤ 1 ms.
LATENCY_CHECKS=(--expect connections_failed==0 --expect lost==0 --expect refused==0)

scenario latency "Latency" \
  "$LOAD_PAIRS pairs at $LAT_RATE messages/s for ${LOAD_SECS} s; p99 ≤ 2 ms, p99.9 ≤ 20 ms" \
  --pairs "$LOAD_PAIRS" --rate "$LAT_RATE" --duration "$LOAD_SECS" --ramp-rate 4000 "${LATENCY_CHECKS[@]}" \
  --expect 'latency_p99_ms<=2' --expect 'latency_p99_9_ms<=20'

# Where the latency holds on this machine, with the generator still on the
# same two cores (docs/performance.md).
scenario knee "Latency below saturation" \
  "the latency scenario at $KNEE_RATE messages/s; p99 ≤ 1 ms" \
  --pairs "$LOAD_PAIRS" --rate "$KNEE_RATE" --duration "$LOAD_SECS" --ramp-rate 4000 "${LATENCY_CHECKS[@]}" \
  --expect 'latency_p99_ms<=1'

scenario storm "Connect storm" \
  "$((STORM_PAIRS * 4)) connections (2 per user) opened at once; all succeed; Django asked at most once per (token, id)" \
  --pairs "$STORM_PAIRS" --tabs 2 --rate idle --duration 1 --ramp-rate 0 --connect-concurrency 2000 \
  --standin-url "http://127.0.0.1:$PORT_STANDIN" \
  --expect connections_failed==0 --expect "django_requests<=$((STORM_PAIRS * 4))"

# The throughput scenario on PostgreSQL (--postgres): issue 14 asks for it
# beside SQLite, in the same run. Last of the load scenarios: the server's
# autovacuum and checkpoint after it would disturb the latency ones.
SCENARIO_STORE=postgres
scenario throughput_postgres "Throughput on PostgreSQL" \
  "the throughput scenario with CHAT_POSTGRES_URL (server on this machine); zero lost" \
  --pairs "$LOAD_PAIRS" --rate max --window 8 --duration "$LOAD_SECS" --ramp-rate 4000 --drain-timeout 15 \
  --expect connections_failed==0 --expect lost==0 --expect refused==0 --expect unacked==0
SCENARIO_STORE=sqlite

# The writer alone, batching into SQLite (criterion, benches/writer.rs).
# Judged on batch 512, the largest the bench runs, in both of its spreads.
persistence() {
  case ",$ONLY," in *",persistence,"*) ;; *) return 0 ;; esac
  echo "== Persistence" >&2
  local args=(--warm-up-time 1 --measurement-time 3)
  if [ "$QUICK" = 1 ]; then args=(--warm-up-time 0.5 --measurement-time 1 --sample-size 10); fi
  local cmd=(cargo bench --locked --bench writer -- "${args[@]}")
  local rc=0
  if [ -n "$POSTGRES_URL" ]; then
    psql "$POSTGRES_URL" -qX -c 'DROP SCHEMA IF EXISTS chat CASCADE' >/dev/null 2>&1
    export CHAT_BENCH_POSTGRES_URL="$POSTGRES_URL"
  fi
  timeout --kill-after=10 1200 "${cmd[@]}" >"$WORK/persistence.txt" 2>"$WORK/persistence.err" || rc=$?
  cat "$WORK/persistence.txt" >&2
  # A result is its name on one line, then "thrpt: [low U mid U high U]";
  # the next "thrpt:" line (a change against an earlier run) is skipped.
  awk '/^writer_(sqlite|postgres)/ {name=$1}
       /thrpt:/ && name != "" {
         scale = ($5 ~ /^Melem/) ? 1e6 : (($5 ~ /^Kelem/) ? 1e3 : 1)
         printf "%s %.0f\n", name, $4 * scale; name = "" }' \
    "$WORK/persistence.txt" >"$WORK/persistence.rates"
  local verdict="PASS"
  if [ "$rc" != 0 ] || ! grep -q batch_512 "$WORK/persistence.rates"; then
    verdict="**ERROR** (exit $rc)"
  elif awk '$1 ~ /^writer_sqlite.*batch_512/ && $2 < 300000 {low=1} END {exit !low}' "$WORK/persistence.rates"; then
    verdict="**FAIL**"
  fi
  local goal="the batched writer alone stores ≥ 300,000 messages/s into SQLite (synchronous=normal) at batch 512"
  echo "| Persistence | $goal | $verdict |" >>"$SUMMARY"
  if [ -n "$POSTGRES_URL" ]; then
    local pg_goal="the batched writer alone stores ≥ 50,000 messages/s into PostgreSQL (on this machine) at batch 512"
    local pg_verdict="PASS"
    if ! grep -q '^writer_postgres.*batch_512' "$WORK/persistence.rates"; then
      pg_verdict="**ERROR** (no result)"
    elif awk '$1 ~ /^writer_postgres.*batch_512/ && $2 < 50000 {low=1} END {exit !low}' "$WORK/persistence.rates"; then
      pg_verdict="**FAIL**"
    fi
    echo "| Persistence on PostgreSQL | $pg_goal | $pg_verdict |" >>"$SUMMARY"
  fi
  {
    echo "## Persistence"
    echo
    echo "Target: $goal"
    echo
    echo '```sh'
    echo "${cmd[*]}"
    echo '```'
    echo
    echo "| benchmark (batch size / conversations the burst is spread over) | messages/s |"
    echo "|---|---|"
    awk '{printf "| %s | %d |\n", $1, $2}' "$WORK/persistence.rates"
    echo
  } >>"$SECTIONS"
}
persistence

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then COMMIT="$COMMIT (with uncommitted changes)"; fi
{
  echo "# Benchmarks$( [ "$SERVER" = ceiling ] && echo ": the bare reference relay (ceiling), not chat-service")"
  echo
  echo "Generated by \`scripts/bench.sh$( [ "$QUICK" = 1 ] && echo " --quick")$( [ "$SERVER" = ceiling ] && echo " --server ceiling")$( [ -n "$POSTGRES_URL" ] && echo " --postgres URL")\` — do not edit by hand."
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $COMMIT"
  echo "- machine: $(nproc) cores ($CPU), $MEM memory, Linux $(uname -r)"
  echo "- load average (1/5/15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER — anything else running competes for the same cores"
  echo "- limits: open files soft $(ulimit -Sn) / hard $(ulimit -Hn); ephemeral ports $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)"
  if [ "$SERVER" = ceiling ]; then
    echo "- server: \`../shared/ceiling/run.sh\` (limit_fastws: no auth, no storage, tokens ignored), a fresh process per scenario"
    echo "- Django: none (the relay asks nothing)"
  else
    echo "- service: \`target/release/chat-service\`, embedded store, CHAT_LOG=warn, a fresh process and data directory per scenario"
    if [ -n "$POSTGRES_URL" ]; then
      echo "- PostgreSQL scenarios: $(psql "$POSTGRES_URL" -qAtX -c 'SHOW server_version' 2>/dev/null) on this machine, fsync $(psql "$POSTGRES_URL" -qAtX -c 'SHOW fsync' 2>/dev/null), synchronous_commit $(psql "$POSTGRES_URL" -qAtX -c 'SHOW synchronous_commit' 2>/dev/null), schema dropped before each"
    fi
    echo "- Django: \`target/release/django-standin\` (token scheme bench-m-/bench-s-)"
  fi
  echo "- generator: \`target/release/loadtest\`, on the same machine (it competes with the service for the cores)"
  if [ "$QUICK" = 1 ]; then echo "- **quick mode: reduced sizes, not the standard targets' sizes**"; fi
  echo
  echo "| scenario | target | result |"
  echo "|---|---|---|"
  cat "$SUMMARY"
  echo
  echo "Latency is end to end: the sender's write to the peer's read, both in the generator."
  echo "Throughput counts each message once, when its peer receives it, during the send phase."
  echo "lost = sent − delivered − refused (silently missing); refused = answered with an \`error\` naming its client_id (e.g. \`overloaded\`)."
  echo "RSS growth per connection is (max(RSS connected, RSS at end of hold) − RSS before) / connections."
  echo
  cat "$SECTIONS"
  # The analysis (profiles, before/after, what still limits) is kept by hand.
  if [ "$SERVER" = chat-service ] && [ -f "$ROOT/docs/performance.md" ]; then echo; cat "$ROOT/docs/performance.md"; fi
} >"$OUT"
echo "== wrote $OUT" >&2
