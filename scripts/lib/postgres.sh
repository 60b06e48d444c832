#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for tests and scripts/dev.sh.
#
#   scripts/lib/postgres.sh start DIR [PORT]   initdb into DIR (if new), start,
#                                              create database "chat"; prints
#                                              the URL on stdout
#   scripts/lib/postgres.sh stop DIR           fast shutdown
#
# Needs Debian's `postgresql` package (PostgreSQL 15). As root, the cluster
# runs as the `postgres` user (initdb refuses root), so DIR's parent must be
# traversable by that user. fsync is off (a test cluster trades crash
# safety for speed) unless POSTGRES_DURABLE=1 (benchmarks, scripts/dev.sh).
set -euo pipefail

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2
  return 1
}

# Runs a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }
bin="$(pg_bin)"

case "$cmd" in
  start)
    port="${3:-55432}"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
    fi
    durability="-c fsync=off"
    if [ "${POSTGRES_DURABLE:-0}" = 1 ]; then durability=""; fi
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $dir $durability -c max_connections=200" >/dev/null
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
      -c "SELECT 1 FROM pg_database WHERE datname = 'chat'" | grep -q 1 ||
      as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres chat
    echo "postgres://postgres@127.0.0.1:$port/chat"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
