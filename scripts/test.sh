#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
#
# 1. Makes sure PostgreSQL and Redis answer on 127.0.0.1:5432 / :6379:
#    starts them if installed but stopped, installs them with apt-get when
#    running as root on Debian/Ubuntu, otherwise stops with the command to run.
# 2. Removes test databases a crashed earlier run may have left behind.
# 3. Validates deploy/ offline (scripts/validate-deploy.py: yamllint,
#    kubectl kustomize, kubernetes-validate, CRD schemas), installing the
#    Python tools with pip when missing; kubectl must be installed.
#    Installs the replica fault tests' tools the same way (haproxy,
#    iptables, iproute2, libfaketime) and removes network namespaces a
#    crashed run left. Installs localstripe (PyPI, a Stripe emulator) into
#    a venv, and Debian's prometheus (prometheus, promtool).
# 4. Runs every test of the workspace (the deploy consistency test among
#    them). Tests that need Postgres or Redis are never skipped: if the
#    services are not there, this script fails first.
# 5. Fuzzes the REST side against its OpenAPI document with a bounded
#    budget (scripts/fuzz-rest.sh: schemathesis, installed with pip).
#
# MERCATO_CRD_SCHEMAS: folder of CRD YAML files to validate Istio and
# Prometheus-operator objects against (default ../shared/schemas).
#
# Overrides: MERCATO_TEST_POSTGRES_URL (an admin URL on a server where the
# tests may create databases), MERCATO_TEST_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/services.sh
. scripts/lib/services.sh

drop_stale_test_databases() {
  local stale role
  stale=$(psql "$MERCATO_TEST_POSTGRES_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'mercato\_test\_%'")
  for db in $stale; do
    psql "$MERCATO_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  done
  # Roles a test made for its database (named after it; their databases,
  # and with them the roles' grants, are gone above). One that still owns
  # something elsewhere is left, and said so: it does not disturb a run.
  for role in $(psql "$MERCATO_TEST_POSTGRES_URL" -Atqc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'mercato\_test\_%'"); do
    psql "$MERCATO_TEST_POSTGRES_URL" -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 \
      || say "left the stale test role $role: it still owns objects (DROP OWNED BY \"$role\" in their database, then DROP ROLE)"
  done
}

drop_stale_test_keys() {
  # Tests use key prefixes "test:<uuid>:"; remove what earlier runs left.
  redis-cli -u "$MERCATO_TEST_REDIS_URL" --scan --pattern 'test:*' \
    | xargs -r -n 500 redis-cli -u "$MERCATO_TEST_REDIS_URL" unlink >/dev/null
}

ensure_deploy_tools() {
  if ! command -v kubectl >/dev/null && can_install; then
    # The Debian/Ubuntu package of the Kubernetes or Google Cloud apt repository.
    apt_install kubectl || say "apt-get could not install kubectl"
  fi
  command -v kubectl >/dev/null || die "kubectl is needed to render deploy/ (kubectl kustomize). Install it: curl -LO https://dl.k8s.io/release/v1.34.0/bin/linux/amd64/kubectl && sudo install kubectl /usr/local/bin/"
  command -v python3 >/dev/null || die "python3 is needed to validate deploy/: sudo apt-get install -y python3 python3-pip"
  if ! python3 -c 'import yaml, jsonschema, yamllint, kubernetes_validate' 2>/dev/null \
    || ! command -v kubernetes-validate >/dev/null; then
    say "installing the manifest validators with pip"
    python3 -m pip install -q "kubernetes-validate==1.37.0" "yamllint==1.38.0" "jsonschema>=4.20" "PyYAML>=6" \
      || die "cannot install the validators; run: python3 -m pip install kubernetes-validate==1.37.0 yamllint==1.38.0 jsonschema PyYAML"
  fi
}

ensure_fault_tools() {
  # The replica fault tests put haproxy (an L7 gRPC balancer, standing in
  # for the mesh) in front of several payment replicas, run each replica
  # in a network namespace of its own (iproute2, iptables: root), and step
  # one replica's wall clock with libfaketime.
  local missing=()
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ip >/dev/null || missing+=(iproute2)
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
  if [ ${#missing[@]} -gt 0 ] && can_install; then
    apt_install "${missing[@]}" || say "apt-get could not install ${missing[*]}"
  fi
  command -v haproxy >/dev/null && command -v iptables >/dev/null && command -v ip >/dev/null \
    && [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] \
    || die "the replica fault tests need haproxy, iptables, iproute2 and libfaketime: sudo apt-get install -y haproxy iptables iproute2 faketime"
  [ "$(id -u)" = 0 ] || die "the replica fault tests create network namespaces: run this script as root"
}

ensure_localstripe() {
  # The Stripe adapter is tested against localstripe (PyPI), a stateful
  # Stripe emulator, installed into a venv of its own in the target directory.
  local venv="${CARGO_TARGET_DIR:-target}/tools/localstripe"
  if [ ! -x "$venv/bin/localstripe" ]; then
    say "installing localstripe into $venv"
    # Debian's python3 makes venvs only with python3-venv installed.
    if ! python3 -c 'import ensurepip' 2>/dev/null && can_install; then
      apt_install python3-venv || say "apt-get could not install python3-venv"
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet localstripe==1.15.10 \
      || die "could not install localstripe: sudo apt-get install -y python3-venv, then python3 -m venv $venv && $venv/bin/pip install localstripe==1.15.10"
  fi
  export MERCATO_LOCALSTRIPE
  MERCATO_LOCALSTRIPE="$(cd "$venv/bin" && pwd)/localstripe"
}

ensure_prometheus() {
  # The rollout analysis and the alert rules are tested against a real
  # Prometheus and with promtool (Debian's prometheus package). Its
  # maintainer script may start a system daemon on :9090 where there is an
  # init system; the tests start their own on free ports and need none.
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if can_install; then
      apt_install prometheus || say "apt-get could not install prometheus"
    fi
  fi
  command -v prometheus >/dev/null && command -v promtool >/dev/null \
    || die "the rollout and alert tests need prometheus and promtool: sudo apt-get install -y prometheus"
}

drop_stale_test_hosts() {
  # Network namespaces (mrc<pid>-<n>), their processes, veth pairs and NAT
  # rules that a crashed earlier run of the replica fault tests left.
  local ns link rule
  for ns in $(ip netns list | awk '/^mrc[0-9]+-[0-9]+/ {print $1}'); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show | awk -F': ' '$2 ~ /^mrc[0-9]+-[0-9]+[oi](@|$)/ {sub(/@.*/, "", $2); print $2}'); do
    ip link del "$link" 2>/dev/null || true
  done
  { iptables -t nat -S 2>/dev/null || true; } \
    | { grep -E ' (-i mrc[0-9]+-[0-9]+o|-s 169\.254\.[0-9]+\.2/32 -d 127\.0\.0\.1/32)' || true; } \
    | sed 's/^-A /-D /' | while read -r rule; do
      # shellcheck disable=SC2086
      iptables -t nat $rule 2>/dev/null || true
    done
  # Each removal above is best effort (one may vanish under another, a
  # namespace takes its veth with it); what counts is that none is left.
  if ip netns list | grep -qE '^mrc[0-9]+-[0-9]+' \
    || ip -o link show | grep -qE ': mrc[0-9]+-[0-9]+[oi](@|:)' \
    || iptables -t nat -S | grep -qE ' -i mrc[0-9]+-[0-9]+o'; then
    die "stale test hosts of an earlier run could not be removed: see 'ip netns list', 'ip link' and 'iptables -t nat -S'"
  fi
}

command -v cargo >/dev/null || die "Rust is not installed: see https://rustup.rs (then re-run this script)"
ensure_postgres
ensure_redis
drop_stale_test_databases
drop_stale_test_keys
ensure_deploy_tools
ensure_fault_tools
drop_stale_test_hosts
ensure_localstripe
ensure_prometheus
say "validating deploy/ offline"
python3 scripts/validate-deploy.py
say "PostgreSQL and Redis are up; running the workspace tests"
cargo test --workspace --locked "$@"
say "fuzzing the REST side against its OpenAPI document"
MERCATO_BIN=target/debug/mercato scripts/fuzz-rest.sh
