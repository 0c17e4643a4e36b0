#!/usr/bin/env bash
# The system services prefmine's tests and multi-node serving use, from the OS packages (Debian): PostgreSQL
# (initdb, pg_ctl, postgres under /usr/lib/postgresql/<major>/bin) for the shared feedback store.
# Idempotent and quiet: does nothing when initdb is already installed; otherwise runs apt-get update (a fresh
# CI machine may have no package lists) and installs `postgresql`, as root or through sudo. The tests start
# their own throwaway server (tests/conftest.py: postgres_server), never the package's default cluster.
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

have_postgres && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_services: PostgreSQL is missing; run as root or install sudo" >&2; exit 1; }
    as_root=(sudo -n)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq postgresql; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_services: installing postgresql failed" >&2
    exit 1
fi
have_postgres || { echo "install_services: postgresql installed but initdb not found" >&2; exit 1; }
