"""Output a person can read: prefmine.progress's lines (done/total, rate, ETA), the epoch follower on a real
metrics.jsonl, and `prefmine data prepare` run as a subprocess on real data: one line per stage with rates on
stderr, JSON alone on stdout, and Ray's own `INFO streaming_executor.py` records in ray.log rather than the console
unless `--verbose`."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefmine.progress import EpochFollower, Progress, format_duration, format_rate

ROOT = Path(__file__).resolve().parents[1]
RAY_RECORD = re.compile(r"\b(INFO|WARNING) \w+\.py:\d+ -- ")  # Ray's console format: `INFO worker.py:123 -- ...`


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_carry_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress("prepare: stage rows", 4, "tasks", out=out, every_s=5.0, clock=clock)
    clock.t += 2.0
    p.update()  # the first unit always writes
    clock.t += 2.0
    p.update()  # 2 s after the last line: throttled
    clock.t += 4.0
    p.update()  # 6 s after: written
    clock.t += 0.5
    p.update()  # the last unit always writes
    lines = out.getvalue().splitlines()
    assert lines == ["prepare: stage rows: 1/4 tasks, 2.0 s/task, ETA 6s",
                     "prepare: stage rows: 3/4 tasks, 2.7 s/task, ETA 3s",
                     "prepare: stage rows: 4/4 tasks, 2.1 s/task, done in 8s"]


def test_formats():
    assert [format_duration(s) for s in (0, 42.4, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]
    assert format_rate(12345.6, "rows") == "12,346 rows/s"
    assert format_rate(2.5, "tasks") == "2.5 tasks/s"
    assert format_rate(0.25, "epochs") == "4.0 s/epoch"
    assert format_rate(0, "rows") == "- rows/s"
    with pytest.raises(ValueError, match="total"):
        Progress("x", -1)


def test_epoch_follower_shows_each_epoch_once(tmp_path):
    path = tmp_path / "ranker" / "metrics.jsonl"
    out = io.StringIO()
    follower = EpochFollower(path, "ranker", epochs=3, out=out)
    assert follower.poll() == 0  # no file yet
    path.parent.mkdir()
    path.write_text(json.dumps({"epoch": 0, "loss": 2.5, "hr@10": 0.125, "samples_per_s": 1500.0,
                                "epoch_seconds": 1.0}) + "\n")
    assert follower.poll() == 1
    assert follower.poll() == 0
    # a restarted run rewrites the file from its checkpoint's history, then appends; a half-written line waits
    path.write_text(json.dumps({"epoch": 0, "loss": 2.5}) + "\n" + json.dumps({"epoch": 1, "loss": 2.0}) + "\n"
                    + '{"epoch": 2, "lo')
    assert follower.poll() == 1
    with path.open("a") as f:
        f.write('ss": 1.5}\n')
    with follower:  # the thread's last poll on exit picks up what is left
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[ranker] epoch: 1/3 epochs, ") and "ETA " in lines[0]
    assert "loss 2.5000, hr@10 0.1250, 1,500 samples/s" in lines[0]
    assert lines[2].startswith("[ranker] epoch: 3/3 epochs, ") and "done in" in lines[2] and "loss 1.5000" in lines[2]


def test_epoch_follower_ignores_a_previous_runs_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 0, "loss": 9.0}) + "\n")
    os.utime(path, (1_000_000, 1_000_000))
    out = io.StringIO()
    assert EpochFollower(path, "encoder", epochs=2, out=out).poll() == 0
    assert out.getvalue() == ""


def _prepare(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFMINE_LOG_DIR": str(tmp_path / f"logs-{name}")}
    env.pop("PREFMINE_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "amazon2018",
                           "--category", "Gift_Cards", "--out", str(tmp_path / name), "--demo-key", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _stage_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("prepare: ")]


def test_prepare_local_shows_stage_lines_with_rates(raw_dir, tmp_path):
    r = _prepare(tmp_path, "local", "--local")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["interactions"] == 2972  # stdout is the result alone
    lines = _stage_lines(r.stderr)
    assert any(re.fullmatch(r"prepare: stage rows: 1/1 tasks, .+/(s|task), done in [\dhm]+s", ln) for ln in lines), lines
    assert any(re.fullmatch(r"prepare: stage rows: [\d,]+ rows in [\dhm]+s, [\d,.]+ rows/s", ln) for ln in lines), lines
    assert any(re.fullmatch(r"prepare: split users: 2,972 rows in [\dhm]+s, [\d,.]+ rows/s", ln) for ln in lines), lines


@pytest.mark.slow
def test_prepare_on_ray_keeps_ray_logs_off_the_console_unless_verbose(raw_dir, tmp_path):
    r = _prepare(tmp_path, "quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["interactions"] == 2972
    lines = _stage_lines(r.stderr)
    assert any(re.fullmatch(r"prepare: stage rows: 1/1 tasks, .+, done in [\dhm]+s", ln) for ln in lines), r.stderr
    assert any(re.fullmatch(r"prepare: split users: 2,972 rows in [\dhm]+s, [\d,.]+ rows/s", ln) for ln in lines)
    console = r.stdout + r.stderr
    assert not RAY_RECORD.search(console), console
    log = (tmp_path / "logs-quiet" / "ray.log").read_text()
    assert "streaming_executor.py" in log  # Ray Data's records are kept, in the file
    assert f"Ray logs: {tmp_path / 'logs-quiet' / 'ray.log'}" in r.stderr

    v = _prepare(tmp_path, "verbose", "--verbose")
    assert v.returncode == 0, v.stderr[-3000:]
    assert RAY_RECORD.search(v.stderr), "--verbose shows Ray's records on the console"
    assert _stage_lines(v.stderr)

