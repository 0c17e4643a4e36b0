"""Start or join Ray with the settings every prefmine process needs.

One torch/OMP thread per process (with two threads a small Adam step on this 2-core class of machine is 25-80x
slower), DeepSpeed's CPU accelerator when there is no GPU, and a quiet log level. `ensure_ray()` joins a running
cluster when RAY_ADDRESS is set (a `ray job submit` run) and otherwise starts a local Ray owned by this process,
with its dashboard on loopback and Ray's token authentication on unless RAY_AUTH_MODE says otherwise: Ray 2.60
turns it on for a local Ray by default and generates the token in ~/.ray/auth_token, which is then made readable
by this user only. RAY_AUTH_MODE must not be set here: Ray reads it when first imported, and a value set later
reaches only the GCS, which then aborts without a token. The test suite sets RAY_AUTH_MODE=disabled. A cluster's
nodes get their mode and token from ray_cluster.yaml (docs/cluster-security.md).

The console is for a person: unless PREFMINE_VERBOSE is set (the CLI's `--verbose`), Ray's own driver-side log
records (`INFO streaming_executor.py ...`, warnings) go to a file, `$PREFMINE_LOG_DIR/ray.log` or else `ray.log`
in the session's log folder (`route_ray_logs()` does that for loggers set up later, ray.data on import), and a
`quiet` caller (data preparation) does not get its workers' output forwarded either (it stays in Ray's session
logs, `<session>/logs/worker-*`): its progress lines come from prefmine.progress. Training still forwards its
workers' output, where rank 0 prints its step and epoch lines.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
VERBOSE_ENV = "PREFMINE_VERBOSE"
LOG_DIR_ENV = "PREFMINE_LOG_DIR"
_session_logs: Path | None = None  # the log folder of the Ray this process started or joined
_log_handler: logging.Handler | None = None


def verbose() -> bool:
    """Whether Ray's and the workers' output should reach the console (PREFMINE_VERBOSE=1, the CLI's --verbose)."""
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def ray_log_file() -> Path:
    """Where Ray's driver-side log records go when not verbose."""
    if os.environ.get(LOG_DIR_ENV):
        d = Path(os.environ[LOG_DIR_ENV])
    elif _session_logs is not None:
        d = _session_logs
    else:
        import tempfile

        d = Path(tempfile.gettempdir()) / "prefmine-logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / "ray.log"


def _is_console(h: logging.Handler) -> bool:
    if isinstance(h, logging.FileHandler) or not isinstance(h, logging.StreamHandler):
        return False
    # Ray's PlainRayHandler resolves sys.stderr when it emits; others hold the stream they were given
    return type(h).__name__ == "PlainRayHandler" or h.stream in (sys.stderr, sys.stdout, sys.__stderr__,
                                                                 sys.__stdout__)


def route_ray_logs() -> Path | None:
    """Move every console handler of Ray's loggers (`ray`, `ray.*`) to one file handler on `ray_log_file()`;
    a no-op when verbose. Safe to call again after more of Ray is imported; returns the file (None if verbose)."""
    global _log_handler
    if verbose():
        return None
    if _log_handler is None:
        _log_handler = logging.FileHandler(ray_log_file(), encoding="utf-8")
        _log_handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s"
                                                    " -- %(message)s"))
    names = ["ray"] + [n for n in list(logging.Logger.manager.loggerDict) if n.startswith("ray.")]
    for name in names:
        lg = logging.getLogger(name)
        console = [h for h in lg.handlers if _is_console(h)]
        for h in console:
            lg.removeHandler(h)
        if console and _log_handler not in lg.handlers:
            lg.addHandler(_log_handler)
    return Path(_log_handler.baseFilename)


def worker_env() -> dict[str, str]:
    env = dict(THREAD_ENV)
    try:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    except ImportError:  # pragma: no cover
        pass
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


def set_process_threads() -> None:
    for k, v in THREAD_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    torch.set_num_threads(1)


def ensure_ray(num_cpus: int | None = None, dashboard: bool = True, quiet: bool = False):
    """Initialise Ray once; returns the ray module. Prints the dashboard URL when it starts one.

    Workers' output reaches the console unless `quiet` (and then still when verbose)."""
    import ray

    if ray.is_initialized():
        route_ray_logs()
        return ray
    to_driver = verbose() or not quiet
    runtime_env = {"env_vars": worker_env()}
    # A submitted job's own runtime_env (`prefmine jobs submit` sets these variables there, and Ray exports them
    # to this driver) may not be given again: Ray refuses to merge the same keys. So only what's missing is added.
    missing = {k: v for k, v in worker_env().items() if k not in os.environ}
    for k, v in worker_env().items():
        os.environ.setdefault(k, v)
    if os.environ.get("RAY_ADDRESS"):
        ctx = ray.init(runtime_env={"env_vars": missing} if missing else None, log_to_driver=to_driver)
        _note_session(ctx)
        return ray
    # address="local": always a new Ray owned by this process. Without it ray.init() joins whatever `ray start`
    # cluster /tmp/ray/ray_current_cluster names (another user's head, or a stale one that no longer answers).
    ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
                   dashboard_host="127.0.0.1", runtime_env=runtime_env,
                   log_to_driver=to_driver, logging_level="INFO" if verbose() else "WARNING")
    _note_session(ctx)
    token = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE") == "token" and token.is_file():
        token.chmod(0o600)  # Ray writes it world-readable; it grants the run of this Ray
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
    return ray


def _note_session(ctx) -> None:
    """Remember the session's log folder and send Ray's console logging there (unless verbose)."""
    global _session_logs
    session = (getattr(ctx, "address_info", None) or {}).get("session_dir")
    if session:
        _session_logs = Path(session) / "logs"
    where = route_ray_logs()
    if where is not None:
        print(f"Ray logs: {where} and worker output in {_session_logs or where.parent} (--verbose shows them here)",
              file=sys.stderr, flush=True)
