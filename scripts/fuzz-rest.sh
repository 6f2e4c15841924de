#!/usr/bin/env bash
# Property-based run of the REST side against its own OpenAPI document
# (schemathesis): `mercato up` on free ports with a fresh data directory,
# every operation called with generated valid and invalid requests as an
# admin, then the stateful phase (links between operations). Every check
# but positive_data_acceptance (the services validate more than a JSON
# schema can say: UUIDs, emails, currencies), so: no 5xx, every response as
# the document says (status, content type, headers, body schema), invalid
# requests refused, undeclared methods 405 with Allow.
#
# Part of scripts/test.sh with a bounded budget; a longer run:
#   FUZZ_EXAMPLES=500 FUZZ_SEED=$RANDOM scripts/fuzz-rest.sh
# MERCATO_BIN: a built `mercato` to run instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${FUZZ_EXAMPLES:-25}
SEED=${FUZZ_SEED:-20261202}
SCHEMATHESIS_VERSION=4.32.5

if ! command -v schemathesis >/dev/null \
  || [ "$(schemathesis --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ]; then
  echo "fuzz-rest: installing schemathesis $SCHEMATHESIS_VERSION with pip" >&2
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" \
    || { echo "fuzz-rest: cannot install schemathesis; run: python3 -m pip install schemathesis==$SCHEMATHESIS_VERSION" >&2; exit 1; }
fi

# scripts/test.sh passes the binary `cargo test --workspace` just built
# (building it alone would resolve other features and compile again).
BIN=${MERCATO_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --locked -q -p mercato-cli --bin mercato
  BIN=target/debug/mercato
fi
DATA=$(mktemp -d)
LOG="$DATA/up.log"
# Stops mercato up (it may have exited already: its log says why) and
# removes its data.
cleanup() {
  if [ -n "${UP:-}" ]; then
    kill "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

# Schemathesis checks that every operation refuses bad credentials with
# 401/403, far more often than the per-address failed-authentication limit
# allows (it would answer 429): that limit is off here.
"$BIN" up --data-dir "$DATA" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --metrics-addr 127.0.0.1:0 --rest-addr 127.0.0.1:0 --failed-auth-limit 0 >"$LOG" 2>&1 &
UP=$!
for _ in $(seq 1 100); do
  grep -q 'export TOKEN=' "$LOG" && break
  kill -0 "$UP" 2>/dev/null || { cat "$LOG" >&2; echo "fuzz-rest: mercato up exited" >&2; exit 1; }
  sleep 0.1
done
REST=$(awk '$1 == "REST" {print $2}' "$LOG" | sed 's#/v1/\.\.\.##')
TOKEN=$(awk -F= '/export TOKEN=/ {print $2}' "$LOG")
[ -n "$REST" ] && [ -n "$TOKEN" ] || { cat "$LOG" >&2; echo "fuzz-rest: no REST address or token in the banner" >&2; exit 1; }

echo "fuzz-rest: schemathesis against $REST/openapi.json, $EXAMPLES examples per operation, seed $SEED"
# From the temporary directory: schemathesis keeps its example database in
# the working directory.
(cd "$DATA" && schemathesis run "$REST/openapi.json" --url "$REST" \
  -H "Authorization: Bearer $TOKEN" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$EXAMPLES" --seed "$SEED" --no-color)
if grep -Eq '"level":"ERROR"| ERROR ' "$LOG"; then
  grep -E '"level":"ERROR"| ERROR ' "$LOG" | head -20 >&2
  echo "fuzz-rest: the server logged errors" >&2
  exit 1
fi
