#!/usr/bin/env bash
# Make PostgreSQL's server programs (initdb, pg_ctl) available to the team tests and to
# `make tracking-server`. Installs Debian's postgresql package when it is missing and this
# runs as root with apt-get. Otherwise it says why not and exits 0: `make test` goes on,
# and the tests that need PostgreSQL are skipped with that reason.
# Nothing is started here: scripts/tracking_server.py runs a private cluster on 127.0.0.1.
set -euo pipefail

have_postgres() {
    { [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; } \
        || command -v initdb >/dev/null \
        || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

have_postgres && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "ensure-postgresql: PostgreSQL is not installed, and installing it needs root and apt-get;" \
         "tests that need it will be skipped. Install it with: sudo apt-get install postgresql" >&2
    exit 0
fi

echo "ensure-postgresql: installing postgresql with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update only if the first try fails.
if ! apt-get install -y -q postgresql >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null \
        || echo "ensure-postgresql: apt-get install postgresql failed; tests that need it will be skipped" >&2
fi
