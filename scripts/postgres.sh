#!/usr/bin/env bash
# Start a throw-away PostgreSQL for the tests and print its SQLAlchemy URL on stdout.
# Installs Debian's postgresql when missing (needs root). initdb runs as the `postgres` user.
set -euo pipefail
PORT="${FASTUNER_PG_PORT:-54329}"
DATA="${FASTUNER_PG_DATA:-/tmp/fastuner-pg}"
bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bin_dir)" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "postgresql is not installed and we are not root" >&2; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
fi
BIN="$(bin_dir)"
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if ! as_pg "$BIN/pg_ctl -D $DATA status" >/dev/null 2>&1; then
  rm -rf "$DATA"; mkdir -p "$DATA"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DATA"
  as_pg "$BIN/initdb -D $DATA -U postgres --auth=trust -E UTF8 >/dev/null"
  as_pg "$BIN/pg_ctl -D $DATA -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off' -l $DATA/log -w start >/dev/null"
fi
psql -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='fastuner_test'" | grep -q 1 \
  || psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE fastuner_test" >&2
echo "postgresql+psycopg://postgres@127.0.0.1:${PORT}/fastuner_test"
