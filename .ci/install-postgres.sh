#!/usr/bin/env bash
# Installs PostgreSQL server binaries for tests/test_search.py (Debian/Ubuntu), and, when run as
# root, makes sure an unprivileged user exists to run the throwaway cluster (postgres refuses root).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends postgresql
fi
# The package starts no server we need; stop its default cluster if it started one.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for v in /etc/postgresql/*/main; do
        [ -d "$v" ] && $SUDO pg_ctlcluster "$(basename "$(dirname "$v")")" main stop 2>/dev/null || true
    done
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && ! id pgtest >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin pgtest
fi
python -c "import psycopg2" 2>/dev/null || python -m pip install -q psycopg2-binary
ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null || command -v initdb
