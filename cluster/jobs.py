"""Submit prefmine jobs to a Ray cluster and watch them: `prefmine jobs submit|status|logs|stop`.

A thin layer over Ray's JobSubmissionClient (the same API `ray job submit` uses), so every `cluster/` entry point
runs on a cluster exactly as it runs locally:

    prefmine jobs submit --address http://HEAD:8265 --wait -- python -m cluster.pipeline --data D --out B
    prefmine jobs status JOB_ID        prefmine jobs logs JOB_ID [--follow]        prefmine jobs stop JOB_ID

What it adds to `ray job submit`: the project directory as the job's working_dir (Ray honours .gitignore, so
.venv, runs/ and the RecBole venv stay behind; the extra `excludes` below keep caches out too) and the process
settings every prefmine worker needs (one torch thread, DeepSpeed's CPU accelerator on CPU-only nodes) in the
job's runtime_env: inside a submitted job Ray ignores the runtime_env a driver passes to `ray.init`, so the job
must carry it. The entrypoint runs with the head node's `python` (the cluster image's environment).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class JobsConfig:
    """Where jobs go and what travels with them."""

    address: str = "http://127.0.0.1:8265"  # the Ray dashboard (job server) of the head node
    working_dir: str = str(ROOT)
    excludes: tuple = (".git", ".venv", ".venv-recbole", "runs", "**/__pycache__", ".pytest_cache", ".ruff_cache")
    poll_s: float = 2.0


def _client(cfg: JobsConfig):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cfg.address)


def job_runtime_env(cfg: JobsConfig) -> dict:
    from cluster.ray_env import worker_env

    return {"working_dir": cfg.working_dir, "excludes": list(cfg.excludes), "env_vars": worker_env()}


def submit(entrypoint: list[str] | str, cfg: JobsConfig = JobsConfig(), submission_id: str | None = None) -> str:
    """Submit `entrypoint` (argv list or shell string) with the project as working_dir; returns the job id."""
    if not entrypoint:
        raise ValueError("entrypoint is empty: give the command after `--`, e.g. -- python -m cluster.pipeline ...")
    cmd = entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
    return _client(cfg).submit_job(entrypoint=cmd, runtime_env=job_runtime_env(cfg), submission_id=submission_id)


def status(job_id: str, cfg: JobsConfig = JobsConfig()) -> str:
    return str(_client(cfg).get_job_status(job_id))


def logs(job_id: str, cfg: JobsConfig = JobsConfig()) -> str:
    return _client(cfg).get_job_logs(job_id)


def stop(job_id: str, cfg: JobsConfig = JobsConfig()) -> bool:
    return bool(_client(cfg).stop_job(job_id))


def wait(job_id: str, cfg: JobsConfig = JobsConfig(), timeout_s: float | None = None, on_status=None) -> str:
    """Poll until the job ends (or `timeout_s` passes: returns the last status); `on_status` sees each change."""
    client, last, t0 = _client(cfg), None, time.monotonic()
    while True:
        st = str(client.get_job_status(job_id))
        if st != last and on_status is not None:
            on_status(st)
        last = st
        if st in TERMINAL or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
            return st
        time.sleep(cfg.poll_s)


def follow_logs(job_id: str, cfg: JobsConfig = JobsConfig(), out=sys.stdout) -> None:
    """Stream the job's logs until it ends (Ray's tail_job_logs over the job server's websocket)."""
    import asyncio

    async def _tail():
        async for chunk in _client(cfg).tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(_tail())


def main_submit(a) -> int:
    cfg = JobsConfig(address=a.address, working_dir=str(Path(a.working_dir).resolve()))
    entrypoint = a.entrypoint[1:] if a.entrypoint[:1] == ["--"] else a.entrypoint
    if not entrypoint:
        print("prefmine: error: entrypoint is empty: give the command after `--`, e.g. "
              "-- python -m cluster.pipeline --data D --out B", file=sys.stderr)
        return 2
    job_id = submit(entrypoint, cfg, a.submission_id)
    print(f"submitted {job_id} to {cfg.address}", flush=True)
    if not a.wait:
        return 0
    final = wait(job_id, cfg, a.timeout, on_status=lambda s: print(f"{job_id}: {s}", flush=True))
    if final != "SUCCEEDED":
        print(logs(job_id, cfg)[-4000:], file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1


def main_status(a) -> int:
    print(status(a.job_id, JobsConfig(address=a.address)))
    return 0


def main_logs(a) -> int:
    cfg = JobsConfig(address=a.address)
    if a.follow:
        follow_logs(a.job_id, cfg)
    else:
        sys.stdout.write(logs(a.job_id, cfg))
    return 0


def main_stop(a) -> int:
    print("stopped" if stop(a.job_id, JobsConfig(address=a.address)) else "not running")
    return 0


def add_parser(sub) -> None:
    """`prefmine jobs ...` sub-commands (called by cluster/cli.py)."""
    jobs = sub.add_parser("jobs", help="submit and watch jobs on a Ray cluster (JobSubmissionClient)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    addr = {"default": JobsConfig.address, "help": "Ray dashboard address of the head node"}
    s = jsub.add_parser("submit", help="run a command on the cluster with this project as working_dir")
    s.add_argument("--address", **addr)
    s.add_argument("--working-dir", default=str(ROOT))
    s.add_argument("--submission-id", default=None)
    s.add_argument("--wait", action="store_true",
                   help="follow the status until the job ends; exit 1 unless it succeeded")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    s.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- python -m cluster.<job> ...")
    s.set_defaults(func=main_submit)
    for name, fn, hlp in (("status", main_status, "the job's status"), ("logs", main_logs, "the job's output"),
                          ("stop", main_stop, "stop a running job")):
        q = jsub.add_parser(name, help=hlp)
        q.add_argument("job_id")
        q.add_argument("--address", **addr)
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
        q.set_defaults(func=fn)

