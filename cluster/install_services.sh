#!/usr/bin/env bash
# The system services and tools prefmine's tests and multi-node serving use, from the OS packages (Debian):
# PostgreSQL (initdb, pg_ctl, postgres under /usr/lib/postgresql/<major>/bin) for the shared feedback store, and
# strace, with which tests/test_feedback_edges.py checks that an append is fsynced before it is acknowledged, and
# redis-server, the external store of Ray's GCS fault tolerance (tests/test_head_failover.py starts its own).
# Idempotent and quiet: does nothing when both are already installed; otherwise runs apt-get update (a fresh
# CI machine may have no package lists) and installs the missing packages, as root or through sudo. The tests
# start their own throwaway server (tests/conftest.py: postgres_server), never the package's default cluster.
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

have_strace() {
    command -v strace >/dev/null 2>&1
}

have_redis() {
    command -v redis-server >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql)
have_strace || missing+=(strace)
have_redis || missing+=(redis-server)
[ "${#missing[@]}" -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_services: ${missing[*]} missing; run as root or install sudo" >&2; exit 1; }
    as_root=(sudo -n)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_services: installing ${missing[*]} failed" >&2
    exit 1
fi
have_postgres || { echo "install_services: postgresql installed but initdb not found" >&2; exit 1; }
have_strace || { echo "install_services: strace installed but not found" >&2; exit 1; }
have_redis || { echo "install_services: redis-server installed but not found" >&2; exit 1; }
