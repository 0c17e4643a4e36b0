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

Ray token authentication is on by default (`JobsConfig.auth`, `--auth`; RAY_AUTH_MODE when set): every request
to the job server carries the cluster's token in its Authorization header (Ray's JobSubmissionClient adds it),
read from RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH (`--token-file`) names, or ~/.ray/auth_token (`ray
get-auth-token`). Without a token the command stops before it contacts the cluster; a wrong one is refused by the
cluster (HTTP 403). The token never travels in the job's runtime_env (the job API shows that to anyone who may
read it): drivers on the cluster use the token the nodes were started with. `--auth disabled` is only for a
cluster started without token auth (the test suite's local ones). docs/cluster-security.md has the whole set-up.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AUTH_MODES = ("token", "disabled")


def default_auth() -> str:
    """RAY_AUTH_MODE if set (Ray's own switch), else token."""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() or "token"


class JobsAuthError(RuntimeError):
    """Token authentication is on but this machine has no token to send."""


@dataclass(frozen=True)
class JobsConfig:
    """Where jobs go and what travels with them."""

    address: str = "http://127.0.0.1:8265"  # the Ray dashboard (job server) of the head node
    working_dir: str = str(ROOT)
    excludes: tuple = (".git", ".venv", ".venv-recbole", "runs", "**/__pycache__", ".pytest_cache", ".ruff_cache")
    poll_s: float = 2.0
    auth: str = field(default_factory=default_auth)  # "token" (default) or "disabled"
    token_file: str | None = None  # the cluster's token (RAY_AUTH_TOKEN_PATH); default: Ray's own lookup

    def __post_init__(self):
        if self.auth not in AUTH_MODES:
            raise ValueError(f"jobs: auth {self.auth!r}; choose one of {list(AUTH_MODES)}")


def configure_auth(cfg: JobsConfig) -> None:
    """Set Ray's auth environment for this process's job client; with token auth, fail unless a token is there.

    Ray reads RAY_AUTH_MODE into its config when it is imported; the CLI runs this first, and an in-process
    caller that imported ray already gets the config re-read."""
    os.environ["RAY_AUTH_MODE"] = cfg.auth
    if cfg.token_file:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(cfg.token_file).expanduser().resolve())
    if "ray" in sys.modules:  # imported already (an in-process caller): re-read the mode, as Ray itself does
        from ray._raylet import Config

        Config.initialize("")
    if cfg.auth != "token":
        return
    sources = [("RAY_AUTH_TOKEN", None)] if os.environ.get("RAY_AUTH_TOKEN", "").strip() else []
    for name, path in (("RAY_AUTH_TOKEN_PATH", os.environ.get("RAY_AUTH_TOKEN_PATH")),
                       ("~/.ray/auth_token", str(Path.home() / ".ray" / "auth_token"))):
        if path:
            try:
                if Path(path).read_text().strip():
                    sources.append((name, path))
            except OSError:
                if name == "RAY_AUTH_TOKEN_PATH":
                    raise JobsAuthError(f"RAY_AUTH_TOKEN_PATH: cannot read the Ray token file {path}") from None
    if not sources:
        raise JobsAuthError("Ray token authentication is on and no token was found: set RAY_AUTH_TOKEN, "
                            "--token-file/RAY_AUTH_TOKEN_PATH, or copy the cluster's token to ~/.ray/auth_token "
                            "(`ray get-auth-token` on the head); --auth disabled only for a cluster without auth")


def _client(cfg: JobsConfig):
    configure_auth(cfg)
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


def _refusing_without_token(main):
    """A sub-command that reports a missing token, or the cluster refusing ours (HTTP 401 without one, 403 for a
    wrong one), as a one-line error (exit 2) instead of a traceback."""
    def run(a) -> int:
        try:
            return main(a)
        except Exception as e:
            from ray.exceptions import AuthenticationError  # imported only now: see configure_auth

            if not isinstance(e, (JobsAuthError, AuthenticationError)):
                raise
            print(f"prefmine: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2

    return run


def _cfg(a, **kw) -> JobsConfig:
    return JobsConfig(address=a.address, auth=a.auth, token_file=a.token_file, **kw)


@_refusing_without_token
def main_submit(a) -> int:
    cfg = _cfg(a, working_dir=str(Path(a.working_dir).resolve()))
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


@_refusing_without_token
def main_status(a) -> int:
    print(status(a.job_id, _cfg(a)))
    return 0


@_refusing_without_token
def main_logs(a) -> int:
    cfg = _cfg(a)
    if a.follow:
        follow_logs(a.job_id, cfg)
    else:
        sys.stdout.write(logs(a.job_id, cfg))
    return 0


@_refusing_without_token
def main_stop(a) -> int:
    print("stopped" if stop(a.job_id, _cfg(a)) else "not running")
    return 0


def add_parser(sub) -> None:
    """`prefmine jobs ...` sub-commands (called by prefmine/cli/main.py)."""
    jobs = sub.add_parser("jobs", help="submit and watch jobs on a Ray cluster (JobSubmissionClient)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    addr = {"default": JobsConfig.address, "help": "Ray dashboard address of the head node (loopback: reach a "
            "cluster's through `ray dashboard ray_cluster.yaml`, an SSH tunnel)"}

    def add_common(q):
        q.add_argument("--address", **addr)
        q.add_argument("--auth", choices=AUTH_MODES, default=default_auth(),
                       help="Ray token authentication (default: RAY_AUTH_MODE if set, else token)")
        q.add_argument("--token-file", default=None,
                       help="file holding the cluster's token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                            "~/.ray/auth_token)")

    s = jsub.add_parser("submit", help="run a command on the cluster with this project as working_dir")
    add_common(s)
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
        add_common(q)
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
        q.set_defaults(func=fn)

