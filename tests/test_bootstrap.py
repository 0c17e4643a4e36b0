"""cluster/bootstrap.sh fails when an install fails (it used to hide that behind `| grep -v ... || true`), keeps
its quiet output, and marks the environment ready only after every step succeeded. The script runs for real;
the interpreter it drives is a stand-in that fails one chosen install, since a real pip cannot be made to fail
on demand without a network."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _venv(tmp_path: Path, failing: str | None) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    fail = f'case "$*" in *"{failing}"*) echo "ERROR: No matching distribution found for {failing}"; exit 1;; esac' \
        if failing else ""
    py = venv / "bin" / "python"
    py.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$*" in *" pip "*) echo "WARNING: Location noise";; *) echo "[real_accelerator.py] noise";; esac
{fail}
echo "did: $*"
""")
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return venv


def _bootstrap(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "cluster" / "bootstrap.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PREFMINE_VENV": str(venv)})


@pytest.mark.parametrize("failing", ["torch==2.13.0", "deepspeed==0.19.8", ".[dev,pretrained]"])
def test_a_failed_install_fails_the_set_up(tmp_path, failing):
    venv = _venv(tmp_path, failing)
    run = _bootstrap(venv)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "set-up failed (exit 1)" in run.stderr and f"No matching distribution found for {failing}" in run.stderr
    assert not (venv / ".prefmine-setup").exists()  # not marked ready: the next run tries again
    calls = (tmp_path / "calls.log").read_text()
    assert failing in calls.splitlines()[-1]  # stopped at the failed step


def test_a_good_set_up_is_quiet_and_marked_ready(tmp_path):
    venv = _venv(tmp_path, None)
    run = _bootstrap(venv)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "noise" not in run.stdout + run.stderr  # pip's and DeepSpeed's noise filtered, as before
    assert "did: -m pip --disable-pip-version-check -q install -e .[dev,pretrained]" in run.stderr
    assert (venv / ".prefmine-setup").is_file()
