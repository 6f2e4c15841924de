# Shared by scripts/test.sh and scripts/bench.sh: make sure PostgreSQL and
# Redis answer at $MERCATO_TEST_POSTGRES_URL / $MERCATO_TEST_REDIS_URL —
# start them if installed but stopped, install them with apt-get when root
# on Debian/Ubuntu, otherwise stop with the command to run.
# shellcheck shell=bash

: "${MERCATO_TEST_POSTGRES_URL:=postgres://postgres:postgres@127.0.0.1:5432/postgres}"
: "${MERCATO_TEST_REDIS_URL:=redis://127.0.0.1:6379}"
export MERCATO_TEST_POSTGRES_URL MERCATO_TEST_REDIS_URL

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_install() {
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Polls once a second, at most 30 times, then fails with the service named.
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 30); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "$what did not come up within 30 s"
}

postgres_up() { pg_isready -q -d "$MERCATO_TEST_POSTGRES_URL"; }
is_local() { case "$1" in *@127.0.0.1[:/]*|*@localhost[:/]*|*://127.0.0.1[:/]*|*://localhost[:/]*|*://127.0.0.1|*://localhost) return 0 ;; *) return 1 ;; esac; }
postgres_usable() { psql "$MERCATO_TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; }

ensure_postgres() {
  local installed_now=false
  if command -v pg_isready >/dev/null && postgres_up; then
    :
  elif ! is_local "$MERCATO_TEST_POSTGRES_URL"; then
    die "PostgreSQL at $MERCATO_TEST_POSTGRES_URL does not answer (needs pg_isready and psql: apt-get install -y postgresql-client)"
  else
    if ! command -v pg_ctlcluster >/dev/null; then
      can_install || die "PostgreSQL is not installed. Install it with: sudo apt-get install -y postgresql"
      apt_install postgresql
      installed_now=true
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "no PostgreSQL cluster found under /etc/postgresql; create one with: sudo pg_createcluster <version> main --start"
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || die \
      "cannot start PostgreSQL; try: sudo pg_ctlcluster --skip-systemctl-redirect $version main start"
    wait_for "PostgreSQL" postgres_up
  fi
  if ! postgres_usable; then
    if $installed_now; then
      # A fresh Debian install asks TCP clients for a password: give the
      # postgres role the one the default test URL uses.
      su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    fi
    postgres_usable || die "cannot log in with MERCATO_TEST_POSTGRES_URL=$MERCATO_TEST_POSTGRES_URL; set it to a URL of a role that may create databases"
  fi
}

redis_up() { redis-cli -u "$MERCATO_TEST_REDIS_URL" ping | grep -q PONG; }

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_up; then return; fi
  is_local "$MERCATO_TEST_REDIS_URL" || die "Redis at $MERCATO_TEST_REDIS_URL does not answer (needs redis-cli: apt-get install -y redis-tools)"
  if ! command -v redis-server >/dev/null; then
    can_install || die "Redis is not installed. Install it with: sudo apt-get install -y redis-server"
    apt_install redis-server
  fi
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null \
    || die "cannot start Redis; try: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no"
  wait_for "Redis" redis_up
}

