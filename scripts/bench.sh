#!/usr/bin/env bash
# A repeatable performance run (README "Benchmarks"):
#  1. builds release binaries;
#  2. starts the suite as microservices (user, payment, order binaries) on
#     Postgres (fresh mercato_bench_* databases) and Redis, pinned to CPU 0
#     while the load generator runs on CPU 1 (when there are two CPUs);
#  3. measures each service's start-to-ready time (migrations applied) and
#     idle RSS;
#  4. runs every scenario of `mercato bench`, sampling each service's CPU
#     and RSS from /proc meanwhile — first `ceiling`: the same get-user calls
#     against `mercato bench-ceiling`, a bare tonic server answering GetUser
#     from a map with no layers, pinned like the services; every scenario is
#     also reported as a ratio to it;
#  5. after each create-order round, runs pgbench on the SQL one
#     CreateOrder issues (scripts/bench/*.sql), each database's by itself,
#     for the ceiling that round is compared with: the rate at which both
#     fit on the machine together;
#  6. prints one table and writes target/bench/results.json.
#
# Knobs: BENCH_DURATION (s, default 10), BENCH_WARMUP (2), BENCH_CONCURRENCY
# (200), BENCH_CONNECTIONS (4), BENCH_SCENARIOS (all), BENCH_PGBENCH_CLIENTS
# (16), BENCH_ROUNDS (1: how many times the scenario list is run; with more,
# each figure is the median round's and each ratio to the ceiling the
# median of the rounds' ratios, each against the ceiling measured seconds
# before it — on a machine whose speed drifts, BENCH_ROUNDS=3
# BENCH_DURATION=5 gives steadier ratios than one 10 s round),
# BENCH_SERVICE_ENV (extra VAR=value settings for every service, for
# A/B runs), BENCH_BIN_DIR (binaries to run instead of building
# target/release, e.g. a copy built with --no-default-features for the
# allocator A/B), BENCH_PAYMENT_METHOD (what create-order pays with, e.g.
# pm_card_visa with BENCH_SERVICE_ENV="PAYMENT_PROVIDER=stripe
# STRIPE_API_BASE=… STRIPE_SECRET_KEY_FILE=…"), MERCATO_TEST_POSTGRES_URL,
# MERCATO_TEST_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/services.sh
. scripts/lib/services.sh

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONCURRENCY=${BENCH_CONCURRENCY:-200}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
SCENARIOS=${BENCH_SCENARIOS:-ceiling health get-user create-user list-orders create-order mixed}
PGBENCH_CLIENTS=${BENCH_PGBENCH_CLIENTS:-16}
ROUNDS=${BENCH_ROUNDS:-1}
OUT=target/bench
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.rss "$OUT"/pgbench-*

for tool in taskset pgbench curl python3; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: apt-get install -y util-linux postgresql-contrib curl python3)"
done
ensure_postgres
ensure_redis

if [ "$(nproc)" -ge 2 ]; then
  SERVERS="taskset -c 0"; LOADGEN="taskset -c 1"; PINNING="servers on CPU 0, load generator on CPU 1"
else
  SERVERS=""; LOADGEN=""; PINNING="one CPU: no pinning"
fi

if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN=$BENCH_BIN_DIR
  say "using the binaries in $BIN"
else
  BIN=target/release
  say "building release binaries"
  cargo build --release --locked --workspace --bins
fi

db_url() { # database name → URL on the same server as the admin URL
  python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
    "$MERCATO_TEST_POSTGRES_URL" "$1"
}
# Each service's URL, worked out before any start is timed (db_url runs
# Python: some 100 ms here, which the start-to-ready figure used to include).
declare -A DB_URL=()
for svc in user order payment; do
  psql "$MERCATO_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS mercato_bench_$svc WITH (FORCE)" >/dev/null
  psql "$MERCATO_TEST_POSTGRES_URL" -qc "CREATE DATABASE mercato_bench_$svc" >/dev/null
  DB_URL[$svc]=$(db_url "mercato_bench_$svc")
done
PREFIX="bench:$(date +%s):"

KEYS=$OUT/keys
rm -rf "$KEYS"
TOKEN=$("$BIN"/mercato token --data-dir "$KEYS" --sub bench --role admin --ttl 7200)
SERVICE_KEY=$("$BIN"/mercato service-key --owner order-service)
KEY=$(sed -n 's/^key=//p' <<<"$SERVICE_KEY")
RECORDS=$(sed -n 's/^records=//p' <<<"$SERVICE_KEY")

declare -A PORT=([user]=19191 [payment]=19291 [order]=19391 [ceiling]=19491)
PROCS="user payment order ceiling"
declare -A PID=()
# Stops the services. Tolerant on purpose: it also runs from the EXIT trap,
# when some of them may have exited already (their status is in the logs).
cleanup() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # service → starts it in the background, sets PID[service]
  local svc=$1 port=${PORT[$1]}
  local -a env=(
    "GRPC_ADDR=127.0.0.1:$port" "HTTP_ADDR=127.0.0.1:$((port + 1))" "METRICS_ADDR=127.0.0.1:$((port + 2))" "REST_ADDR=127.0.0.1:$((port + 3))"
    "DATABASE_URL=${DB_URL[$svc]}" "DATABASE_MAX_CONNECTIONS=16"
    "REDIS_URL=$MERCATO_TEST_REDIS_URL" "REDIS_KEY_PREFIX=$PREFIX"
    "AUTH__JWT__PUBLIC_KEY_FILES=[$PWD/$KEYS/dev-signing.pem]" "LOG_LEVEL=warn"
    "MAX_CONCURRENT_REQUESTS=4096"
  )
  # Extra settings for an A/B run, e.g. BENCH_SERVICE_ENV="DATABASE_TEST_BEFORE_ACQUIRE=true".
  # shellcheck disable=SC2206
  env+=(${BENCH_SERVICE_ENV:-})
  case $svc in
    order) env+=("SERVICE_API_KEY=$KEY" "USER_SERVICE_ADDR=http://127.0.0.1:${PORT[user]}"
                 "PAYMENT_SERVICE_ADDR=http://127.0.0.1:${PORT[payment]}") ;;
    *) env+=("AUTH__API_KEYS=$RECORDS") ;;
  esac
  env -i PATH="$PATH" "${env[@]}" $SERVERS "$BIN/$svc-service" >>"$OUT/$svc.log" 2>&1 &
  PID[$svc]=$!
}

declare -A READY=() IDLE=()
ready_ms() { # service → starts it; READY[service] = ms until /health/ready answers 200
  local svc=$1 begin now
  begin=$(date +%s%N)
  start "$svc"
  until curl -sf -o /dev/null "http://127.0.0.1:$((PORT[$svc] + 1))/health/ready"; do
    kill -0 "${PID[$svc]}" 2>/dev/null || die "$svc-service exited; see $OUT/$svc.log"
    now=$(date +%s%N)
    [ $(((now - begin) / 1000000)) -lt 30000 ] || die "$svc-service not ready after 30 s"
    sleep 0.002
  done
  now=$(date +%s%N)
  READY[$svc]=$(((now - begin) / 1000000))
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

say "first start: applying migrations"
for svc in user payment order; do ready_ms "$svc"; done
cleanup; PID=()
say "measuring start-to-ready with migrations applied"
for svc in user payment order; do ready_ms "$svc"; done
# "Idle" means a second after ready, once start-up allocations have settled
# (a fixed pause is the measurement's definition, not a readiness wait).
sleep 1
for svc in user payment order; do IDLE[$svc]=$(rss_kib "${PID[$svc]}"); done
# shellcheck disable=SC2086 # $SERVERS is a command prefix, split on purpose
$SERVERS "$BIN"/mercato bench-ceiling --addr "127.0.0.1:${PORT[ceiling]}" >>"$OUT/ceiling.log" 2>&1 &
PID[ceiling]=$!

psql "${DB_URL[order]}" -qc "INSERT INTO products VALUES ('pgbench-product', 'pgbench', 'USD', 100, 1000000000000, 0, 0) ON CONFLICT DO NOTHING" >/dev/null
pg_run() { # service, script → transactions per second on its database
  # Without TLS, like the services' own connections (sqlx is built without
  # it): pgbench would otherwise negotiate TLS on a TCP URL, which cost it
  # 10-20 % of its rate here and understated the ceiling.
  # The scripts make their own ids (-D: a count per client, this run's mark).
  PGSSLMODE=disable pgbench -n -M prepared -c "$PGBENCH_CLIENTS" -j 1 -T "$DURATION" \
    -D seq=0 -D run="$(date +%s)" -D now="$(date +%s%6N)" -f "$2" "${DB_URL[$1]}" 2>/dev/null \
    | awk '/^tps = / {printf "%.0f", $3}'
}
# pgbench runs right after each create-order round (the machine's speed
# drifts by a quarter within minutes, so the ceiling is measured next to the
# figure it divides), one database after the other, each with the machine
# to itself: an order needs both databases' work, so the ceiling is the rate
# at which the two fit together, 1 / (1/order + 1/payment). (Run at once,
# the cheaper payment script took CPU in proportion to its clients, not to
# the order rate, and the "ceiling" came out below what the services reach.)
declare -A PG=() # round → "order payment" tx/s
pg_ceiling() { # round → PG[round]
  say "pgbench: the SQL of one CreateOrder, each database by itself ($PGBENCH_CLIENTS clients), round $1"
  PG[$1]="$(pg_run order scripts/bench/create-order-order-db.sql) $(pg_run payment scripts/bench/create-order-payment-db.sql)"
}
HZ=$(getconf CLK_TCK)
declare -A CPU=() PEAK=()
RUNS=""
for round in $(seq 1 "$ROUNDS"); do for scenario in $SCENARIOS; do RUNS+=" $scenario@$round"; done; done
for run in $RUNS; do
  scenario=${run%@*}
  say "scenario $scenario, round ${run#*@} of $ROUNDS ($PINNING)"
  declare -A before=()
  for svc in $PROCS; do before[$svc]=$(cpu_ticks "${PID[$svc]}"); PEAK[$run.$svc]=0; done
  t0=$(date +%s%N)
  (
    while :; do
      for svc in $PROCS; do rss_kib "${PID[$svc]}"; done | paste -sd' ' >>"$OUT/$run.rss"
      sleep 0.5
    done
  ) &
  sampler=$!
  case $scenario in
    ceiling) target=(--scenario get-user --label Ceiling --user-addr "127.0.0.1:${PORT[ceiling]}") ;;
    *) target=(--scenario "$scenario" --user-addr "127.0.0.1:${PORT[user]}") ;;
  esac
  $LOADGEN "$BIN"/mercato bench "${target[@]}" --order-addr "127.0.0.1:${PORT[order]}" \
    --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" \
    --warmup "$WARMUP" --duration "$DURATION" --token "$TOKEN" --json "$OUT/$run.json" \
    ${BENCH_PAYMENT_METHOD:+--payment-method "$BENCH_PAYMENT_METHOD"}
  # The sampler loops until killed, so its exit status is always 143.
  kill "$sampler"
  wait "$sampler" 2>/dev/null || [ $? -eq 143 ]
  t1=$(date +%s%N)
  i=0
  for svc in $PROCS; do
    i=$((i + 1))
    CPU[$run.$svc]=$(awk -v a="${before[$svc]}" -v b="$(cpu_ticks "${PID[$svc]}")" -v hz="$HZ" -v ns=$((t1 - t0)) \
      'BEGIN {printf "%.0f", (b - a) / hz / (ns / 1e9) * 100}')
    PEAK[$run.$svc]=$(awk -v c=$i 'BEGIN {m = 0} {if ($c > m) m = $c} END {print m}' "$OUT/$run.rss")
  done
  [ "$scenario" != create-order ] || pg_ceiling "${run#*@}"
done

PG_ROUNDS=$(for r in "${!PG[@]}"; do printf '%s:%s ' "$r" "${PG[$r]// /:}"; done)
python3 - "$OUT" "$PINNING" "$PG_ROUNDS" "$RUNS" <<PY
import json, sys
out, pinning, runs = sys.argv[1], sys.argv[2], sys.argv[4].split()
# round → (order DB tx/s, payment DB tx/s, both per order)
pg = {}
for entry in sys.argv[3].split():
    r, o, p = entry.split(":")
    o, p = int(o or 0), int(p or 0)
    pg[r] = (o, p, round(1 / (1 / o + 1 / p)) if o and p else 0)
ready = {"user": ${READY[user]}, "payment": ${READY[payment]}, "order": ${READY[order]}}
idle = {"user": ${IDLE[user]}, "payment": ${IDLE[payment]}, "order": ${IDLE[order]}}
cpu = {$(for k in "${!CPU[@]}"; do printf '"%s": %s, ' "$k" "${CPU[$k]}"; done)}
peak = {$(for k in "${!PEAK[@]}"; do printf '"%s": %s, ' "$k" "${PEAK[$k]}"; done)}
rows = []
rounds = int("${ROUNDS}")
print(f"\nmercato bench — {pinning}; ${CONCURRENCY} callers over ${CONNECTIONS} connections, ${WARMUP} s warm-up, ${DURATION} s measured"
      + (f", {rounds} rounds (median round shown; x ceil: median of the rounds' ratios)" if rounds > 1 else "") + "\n")
print(f"{'scenario':<13}{'calls/s':>9}{'x ceil':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}  {'errors':<18}{'CPU % u/p/o':<16}{'peak RSS MiB u/p/o'}")
loaded = {run: json.load(open(f"{out}/{run}.json")) for run in runs}
scenarios = list(dict.fromkeys(run.split("@")[0] for run in runs))
def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
def ratios(s, key):
    """The scenario's figure over the ceiling's of the same round, per round."""
    return [key(loaded[run]) / key(loaded[f"ceiling@{run.split('@')[1]}"])
            for run in runs if run.split("@")[0] == s and f"ceiling@{run.split('@')[1]}" in loaded]
for s in scenarios:
    mine = sorted((run for run in runs if run.split("@")[0] == s), key=lambda run: loaded[run]["calls_per_sec"])
    shown = mine[(len(mine) - 1) // 2]
    r = loaded[shown]
    l = r["latency_us"]
    errors = {}
    for run in mine:
        for k, v in loaded[run]["errors"].items():
            errors[k] = errors.get(k, 0) + v
    error_text = ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"
    procs = ("ceiling",) if s == "ceiling" else ("user", "payment", "order")
    c = "/".join(str(cpu.get(f"{shown}.{x}", "-")) for x in procs)
    m = "/".join(f"{max(peak.get(f'{run}.{x}', 0) for run in mine) / 1024:.1f}" for x in procs)
    x = ratios(s, lambda r: r["calls_per_sec"])
    x_text = f"{median(x):.2f}" if x else "-"
    print(f"{s:<13}{r['calls_per_sec']:>9.0f}{x_text:>8}{l['p50']/1e3:>9.2f}{l['p90']/1e3:>9.2f}{l['p99']/1e3:>9.2f}{l['p999']/1e3:>10.2f}{l['max']/1e3:>9.2f}  {error_text:<18}{c:<16}{m}")
    rows.append({**r, "errors": errors, "cpu_percent": {x: cpu.get(f"{shown}.{x}") for x in procs},
                 "peak_rss_kib": {x: max(peak.get(f"{run}.{x}", 0) for run in mine) for x in procs},
                 "rounds": [{"calls_per_sec": loaded[run]["calls_per_sec"], "latency_us": loaded[run]["latency_us"]}
                            for run in sorted(mine, key=lambda run: int(run.split("@")[1]))]})
print(f"\nready after start (migrations applied): " + ", ".join(f"{k} {v} ms" for k, v in ready.items()))
print(f"idle RSS: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in idle.items()))
for r, (o, p, c) in sorted(pg.items(), key=lambda item: int(item[0])):
    print(f"pgbench ceiling of CreateOrder's SQL{f' (round {r})' if len(pg) > 1 else ''}: order DB alone {o} tx/s, payment DB alone {p} tx/s -> both per order {c}/s")
by = {r["scenario"]: r for r in rows}
def each(values):
    return f" (rounds: {', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
for s, goal in (("get-user", 0.75), ("health", 0.85)):
    x = ratios(s, lambda r: r["calls_per_sec"])
    if x:
        line = f"{s.replace('-', '')} / ceiling: throughput {median(x):.2f}x (target >= {goal}){each(x)}"
        if s == "get-user":
            p = ratios(s, lambda r: r["latency_us"]["p99"])
            line += f", p99 {median(p):.2f}x (target <= 1.5){each(p)}"
        print(line)
# Each create-order round over the pgbench ceiling measured right after it.
co_x = [loaded[run]["calls_per_sec"] / pg[r][2] for run in runs
        for r in [run.split("@")[1]] if run.startswith("create-order@") and r in pg and pg[r][2]]
if "CreateOrder" in by and co_x:
    co = by["CreateOrder"]
    print(f"create-order / pgbench ceiling: {median(co_x):.2f}x (target >= 0.8){each(co_x)}, "
          f"p99 {co['latency_us']['p99'] / 1e3:.0f} ms (target < 300)")
json.dump({"pinning": pinning, "scenarios": rows, "ready_ms": ready, "idle_rss_kib": idle,
           "pgbench": [{"round": int(r), "order_tps": o, "payment_tps": p, "ceiling": c}
                       for r, (o, p, c) in sorted(pg.items(), key=lambda item: int(item[0]))],
           "create_order_over_pgbench": co_x},
          open(f"{out}/results.json", "w"), indent=2)
print(f"\nwritten: {out}/results.json")
PY
