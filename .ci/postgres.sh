#!/usr/bin/env bash
# Install (Debian apt) and start a PostgreSQL server on 127.0.0.1 for the tests that share one Optuna study
# between sweep processes (tests/test_tune.py). Idempotent: a second call finds the server up and only prints
# its URL. Prints the storage URL on its last line; tests read it from RNN_SWEEP_PG_URL:
#
#   export RNN_SWEEP_PG_URL=$(bash .ci/postgres.sh | tail -1)
#
# Settings (environment): RNN_SWEEP_PG_PORT (55432), RNN_SWEEP_PG_DATA (/var/tmp/rnn-sweep-pg),
# RNN_SWEEP_PG_DB (rnn_sweep). The server trusts local connections: a throwaway test server, never a real one.
set -euo pipefail

PORT="${RNN_SWEEP_PG_PORT:-55432}"
DATA="${RNN_SWEEP_PG_DATA:-/var/tmp/rnn-sweep-pg}"
DB="${RNN_SWEEP_PG_DB:-rnn_sweep}"
URL="postgresql://postgres@127.0.0.1:${PORT}/${DB}"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

BIN="$(find_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed and installing it needs root (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "postgres.sh: installing PostgreSQL (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN="$(find_bin)"
fi

# initdb and the server refuse to run as root: run them as the postgres user the package creates
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  mkdir -p "$DATA"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA"; fi
  chmod 700 "$DATA"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 >/dev/null
  fi
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2
fi

if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" |
  grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi
echo "$URL"
