# Sourced by .ci/run: install Debian's PostgreSQL when missing, start a throwaway server on
# 127.0.0.1 in a temp dir, create a user and a database for the tests, and export its URL as
# SHUFFLESEARCH_TEST_PG, a psycopg2 URL as SQLAlchemy >= 2.1 defaults to psycopg 3 (tests/search/test_reliability.py fails without it when CI=true).
# Usable by hand too: `source .ci/postgres.sh` (stop: pg_ctl -D "$SHUFFLESEARCH_PG_DIR/data" stop).
_pg_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "+ apt-get install postgresql"
  _pg_root apt-get update -qq
  _pg_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
_pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
SHUFFLESEARCH_PG_DIR=$(mktemp -d /tmp/shufflesearch-pg.XXXXXX)
_pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The server refuses to run as root: as root, run it as the postgres user the package created.
if [ "$(id -u)" = 0 ]; then
  chown postgres "$SHUFFLESEARCH_PG_DIR"
  _pg_as() { runuser -u postgres -- "$@"; }
else
  _pg_as() { "$@"; }
fi
_pg_as "$_pg_bin/initdb" -D "$SHUFFLESEARCH_PG_DIR/data" -A trust -U postgres >/dev/null
_pg_as "$_pg_bin/pg_ctl" -D "$SHUFFLESEARCH_PG_DIR/data" -l "$SHUFFLESEARCH_PG_DIR/server.log" -w \
  -o "-p $_pg_port -k $SHUFFLESEARCH_PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null
"$_pg_bin/createuser" -h 127.0.0.1 -p "$_pg_port" -U postgres --createdb shufflesearch  # tests make fresh databases
"$_pg_bin/createdb" -h 127.0.0.1 -p "$_pg_port" -U postgres -O shufflesearch shufflesearch_test
export SHUFFLESEARCH_PG_DIR
export SHUFFLESEARCH_TEST_PG="postgresql+psycopg2://shufflesearch@127.0.0.1:$_pg_port/shufflesearch_test"
trap '_pg_as "$_pg_bin/pg_ctl" -D "$SHUFFLESEARCH_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true' EXIT
echo "+ PostgreSQL $("$_pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$_pg_port ($SHUFFLESEARCH_TEST_PG)"
