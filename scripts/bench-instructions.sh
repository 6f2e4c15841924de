#!/usr/bin/env bash
# Instructions per GetUser call, counted by callgrind (README "Benchmarks"):
# the figure to compare builds by on a machine whose speed drifts between
# runs (calls/s from scripts/bench.sh swing by 20-30 % here from one
# scenario to the next). It runs the user service, then `mercato
# bench-ceiling`, under `valgrind --tool=callgrind`, drives each with the
# get-user scenario (20 callers over 4 connections), zeroes the counters
# after a warm-up, and divides the instructions of the measured seconds by
# the calls answered in them.
#
# Instructions are not time: aws-lc's SHA-256, for one, runs its AVX path
# under valgrind instead of the SHA extensions, so hashing looks dearer
# here than it is. Use it for A/B comparisons; report calls/s from
# scripts/bench.sh.
#
# Knobs: BENCH_BIN_DIR (binaries to count, default: build target/release),
# BENCH_DURATION (measured seconds, default 15), BENCH_SERVICE_ENV (extra
# VAR=value settings for the user service), MERCATO_TEST_POSTGRES_URL,
# MERCATO_TEST_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/services.sh
. scripts/lib/services.sh

DURATION=${BENCH_DURATION:-15}
OUT=target/bench-instructions
mkdir -p "$OUT"
for tool in valgrind callgrind_control callgrind_annotate taskset curl psql python3; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: apt-get install -y valgrind util-linux curl postgresql-client python3)"
done
ensure_postgres
ensure_redis
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN=$BENCH_BIN_DIR
else
  say "building release binaries"
  cargo build --release --locked -p mercato-user -p mercato-cli --bins
  BIN=target/release
fi
if [ "$(nproc)" -ge 2 ]; then SERVER="taskset -c 0"; LOADGEN="taskset -c 1"; else SERVER=""; LOADGEN=""; fi

DB=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/mercato_bench_instructions")))' "$MERCATO_TEST_POSTGRES_URL")
psql "$MERCATO_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS mercato_bench_instructions WITH (FORCE)" >/dev/null
psql "$MERCATO_TEST_POSTGRES_URL" -qc "CREATE DATABASE mercato_bench_instructions" >/dev/null
rm -rf "$OUT/keys" "$OUT"/callgrind.*
TOKEN=$("$BIN"/mercato token --data-dir "$OUT/keys" --sub bench --role admin --ttl 7200)
ADDR=127.0.0.1:29191

VG=""
# Stops a server still running when the script ends early. Tolerant on
# purpose, as in scripts/bench.sh: it runs from the EXIT trap, when the
# server may have exited already (its status is in its log).
cleanup() { [ -z "$VG" ] || kill "$VG" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

load() { # seconds → runs get-user against $ADDR, its report in $OUT/bench.json
  $LOADGEN "$BIN"/mercato bench --scenario get-user --user-addr "$ADDR" --order-addr "$ADDR" \
    --concurrency 20 --connections 4 --warmup 0 --duration "$1" --token "$TOKEN" \
    --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1 || die "the load failed; see $OUT/bench.log"
}

count() { # name, [VAR=value...] command... → prints instructions per call of the server it starts
  local name=$1; shift
  # shellcheck disable=SC2086 # $SERVER is a command prefix, split on purpose
  $SERVER env -i PATH="$PATH" "${@:1:$ENVS}" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name" \
    "${@:$((ENVS + 1))}" >"$OUT/$name.log" 2>&1 &
  VG=$!
  local waited=0
  until (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null; do
    kill -0 "$VG" 2>/dev/null || die "$name exited; see $OUT/$name.log"
    waited=$((waited + 1)); [ "$waited" -lt 240 ] || die "$name not listening after 120 s"
    sleep 0.5
  done
  load 5
  callgrind_control -z "$VG" >/dev/null 2>&1
  load "$DURATION"
  callgrind_control -d "$VG" >/dev/null 2>&1
  # Stopped by SIGTERM, so 143 is its only good status.
  kill "$VG"
  wait "$VG" 2>/dev/null || [ $? -eq 143 ] || die "$name exited abnormally; see $OUT/$name.log"
  VG=""
  python3 - "$name" "$OUT/bench.json" "$OUT"/callgrind."$name".* <<'PY'
import json, re, subprocess, sys
name, report, dump = sys.argv[1], sys.argv[2], sys.argv[3]
calls = json.load(open(report))["calls"]
text = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True, check=True).stdout
total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
print(f"{name:<14}{calls:>9} calls {total / calls:>10.0f} instructions per call")
PY
}

say "counting (each server under callgrind, ${DURATION} s measured)"
USER_ENV=(GRPC_ADDR=$ADDR HTTP_ADDR=127.0.0.1:29192 METRICS_ADDR=127.0.0.1:29193 REST_ADDR=127.0.0.1:29194
  DATABASE_URL="$DB" REDIS_URL="$MERCATO_TEST_REDIS_URL" REDIS_KEY_PREFIX="bench-instructions:$(date +%s):"
  "AUTH__JWT__PUBLIC_KEY_FILES=[$PWD/$OUT/keys/dev-signing.pem]" LOG_LEVEL=warn MAX_CONCURRENT_REQUESTS=4096)
# Extra settings for an A/B run, as scripts/bench.sh takes them.
# shellcheck disable=SC2206
USER_ENV+=(${BENCH_SERVICE_ENV:-})
ENVS=${#USER_ENV[@]} count user-service "${USER_ENV[@]}" "$BIN"/user-service >"$OUT/results.txt"
ENVS=0 count ceiling "$BIN"/mercato bench-ceiling --addr "$ADDR" >>"$OUT/results.txt"
cat "$OUT/results.txt"
awk '/^user-service/ {u = $4} /^ceiling/ {c = $4} END {if (u) printf "ceiling / get-user: %.2fx (the share of the bare server'"'"'s cost per call)\n", c / u}' "$OUT/results.txt"
