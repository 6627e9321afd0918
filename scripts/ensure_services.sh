#!/usr/bin/env bash
# Make sure the Postgres and Redis that the tests use are reachable: honour
# DATABASE_URL/REDIS_URL when they point at real servers, start local servers that are
# installed but stopped, install them (Debian/Ubuntu, as root) when missing, and
# otherwise stop with a message naming what to install.
set -euo pipefail

PY=${PY:-.venv/bin/python}
pg_url=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/test}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
case "$pg_url" in postgresql*) ;; *) pg_url=postgresql+asyncpg://postgres@127.0.0.1:5432/test ;; esac
case "$redis_url" in redis*) ;; *) redis_url=redis://127.0.0.1:6379/0 ;; esac

pg_ok() {
  "$PY" - "$pg_url" <<'PYEOF' >/dev/null 2>&1
import asyncio, sys
import asyncpg
url = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")
async def main():
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()
asyncio.run(main())
PYEOF
}

redis_ok() {
  "$PY" - "$redis_url" <<'PYEOF' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3).ping()
PYEOF
}

wait_for() {  # wait_for CHECK SECONDS: poll until the check passes or time runs out
  local check=$1 deadline=$((SECONDS + $2))
  until $check; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

ensure_postgres() {
  pg_ok && return 0
  if ! command -v pg_ctlcluster >/dev/null; then
    if can_install; then
      echo "installing PostgreSQL (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      echo "PostgreSQL is not reachable at $pg_url and not installed: install postgresql (or set DATABASE_URL)" >&2
      exit 1
    fi
  fi
  echo "starting PostgreSQL"
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_for pg_ok 30 || { echo "PostgreSQL did not come up at $pg_url" >&2; exit 1; }
  # Fresh installs: trust local TCP connections for the test user and create the db.
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test" || true
}

ensure_redis() {
  redis_ok && return 0
  if ! command -v redis-server >/dev/null; then
    if can_install; then
      echo "installing Redis (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      echo "Redis is not reachable at $redis_url and not installed: install redis-server (or set REDIS_URL)" >&2
      exit 1
    fi
  fi
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for redis_ok 15 || { echo "Redis did not come up at $redis_url" >&2; exit 1; }
}

# The Redis Cluster test (tests/e2e/test_redis_cluster.py) starts its own three nodes:
# it needs redis-server and redis-cli on PATH even when REDIS_URL names a remote Redis.
ensure_redis_binaries() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  if can_install; then
    echo "installing redis-server and redis-cli for the Redis Cluster test (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server and redis-cli are needed on PATH (the Redis Cluster test starts its own nodes): install redis-server" >&2
    exit 1
  fi
}

ensure_postgres
ensure_redis
ensure_redis_binaries
echo "Postgres and Redis are reachable"
