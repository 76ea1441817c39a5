#!/usr/bin/env bash
# The server's own ceilings, measured with wrk: a load generator in C that needs far less
# of the shared cores than coupond-bench's client, so what it reaches is closer to what
# the server alone can do. It checks nothing but the status codes: the invariants are
# coupond-bench's job. docs/PERFORMANCE.md reads these against coupond-bench's figures.
#
#   cargo build --release -p coupond
#   bash crates/coupond-bench/wrk/ceiling.sh [sqlite|postgres]
#
# One fresh server on a fresh database; then, for DURATION each (default 10s) with
# CONNECTIONS connections (default 64) on two wrk threads:
#   issue   every request a new user and a new key
#   replay  the first KEYS (default 5000) keys of each issue thread again, round and
#           round (their first replay reads the database, the rest are answered from memory)
#   ping    GET /healthz, no key, no database: the HTTP round trip alone
# A run with any answer other than 2xx fails the script.
set -euo pipefail

backend=${1:-sqlite}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-64}
keys=${KEYS:-5000}
root=$(cd "$(dirname "$0")/../../.." && pwd)
here="$root/crates/coupond-bench/wrk"
bin=${COUPOND_BIN:-$root/target/release/coupond}
admin_url=${COUPOND_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

command -v wrk >/dev/null || { echo "needs wrk (e.g. apt-get install wrk)" >&2; exit 2; }
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p coupond" >&2; exit 2; }

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="cpd_ceiling_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
base="http://127.0.0.1:$port"
server=
database=

cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  if [ -n "$database" ]; then
    psql "$admin_url" -X -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

case "$backend" in
  sqlite) url="sqlite://$tmp/ceiling.db" ;;
  postgres)
    database="coupond_ceiling_$$"
    psql "$admin_url" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database"
    url="${admin_url%/*}/$database?sslmode=disable"
    ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac

COUPOND_LOG=warn "$bin" serve --bind "127.0.0.1:$port" --database-url "$url" \
  --bootstrap-admin-key "$key" >"$tmp/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { cat "$tmp/server.log" >&2; exit 1; }

batch=$(curl -fs -X POST "$base/v1/coupon-batches/" \
  -H "Authorization: Bearer $key" -H 'Idempotency-Key: ceiling-batch' \
  -H 'Content-Type: application/json' \
  -d '{"name":"ceiling","discount_type":"fixed","amount":100,"total_limit":1000000000,"per_user_limit":1,"expires_at":"2099-01-01T00:00:00Z"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

export COUPOND_KEY=$key BATCH_ID=$batch PREFIX=c
unset REPLAY_KEYS

# One wrk run; prints "name  requests/s  p99" and fails on any non-2xx answer.
run() {
  local name=$1
  shift
  local out
  out=$(wrk -t2 -c"$connections" -d"$duration" --latency "$@")
  if grep -q "Non-2xx" <<<"$out" || grep -q "Socket errors" <<<"$out"; then
    echo "$out" >&2
    echo "$name: not every answer was 2xx" >&2
    exit 1
  fi
  printf '%-7s %10s/s   p99 %s\n' "$name" \
    "$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}

echo "$backend, $connections connections, $duration each ($(nproc) cores shared with wrk)"
run issue -s "$here/issue.lua" "$base"
REPLAY_KEYS=$keys run replay -s "$here/issue.lua" "$base"
run ping "$base/healthz"
