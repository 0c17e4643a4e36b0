"""Start or join Ray with the settings every prefmine process needs.

One torch/OMP thread per process (with two threads a small Adam step on this 2-core class of machine is 25-80x
slower), DeepSpeed's CPU accelerator when there is no GPU, and a quiet log level. `ensure_ray()` joins a running
cluster when RAY_ADDRESS is set (a `ray job submit` run) and otherwise starts a local Ray owned by this process,
with its dashboard on loopback and Ray's token authentication on unless RAY_AUTH_MODE says otherwise: Ray 2.60
turns it on for a local Ray by default and generates the token in ~/.ray/auth_token, which is then made readable
by this user only. RAY_AUTH_MODE must not be set here: Ray reads it when first imported, and a value set later
reaches only the GCS, which then aborts without a token. The test suite sets RAY_AUTH_MODE=disabled. A cluster's
nodes get their mode and token from ray_cluster.yaml (docs/cluster-security.md).
"""

from __future__ import annotations

import os
from pathlib import Path

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


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
    """Initialise Ray once; returns the ray module. Prints the dashboard URL when it starts one."""
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": worker_env()}
    # A submitted job's own runtime_env (`prefmine jobs submit` sets these variables there, and Ray exports them
    # to this driver) may not be given again: Ray refuses to merge the same keys. So only what's missing is added.
    missing = {k: v for k, v in worker_env().items() if k not in os.environ}
    for k, v in worker_env().items():
        os.environ.setdefault(k, v)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": missing} if missing else None, log_to_driver=not quiet)
        return ray
    # address="local": always a new Ray owned by this process. Without it ray.init() joins whatever `ray start`
    # cluster /tmp/ray/ray_current_cluster names (another user's head, or a stale one that no longer answers).
    ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
                   dashboard_host="127.0.0.1", runtime_env=runtime_env,
                   log_to_driver=not quiet, logging_level="WARNING")
    token = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE") == "token" and token.is_file():
        token.chmod(0o600)  # Ray writes it world-readable; it grants the run of this Ray
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
    return ray
