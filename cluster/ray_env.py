"""Start or join Ray with the settings every prefmine process needs.

One torch/OMP thread per process (with two threads a small Adam step on this 2-core class of machine is 25-80x
slower), DeepSpeed's CPU accelerator when there is no GPU, and a quiet log level. `ensure_ray()` joins a running
cluster when RAY_ADDRESS is set (a `ray job submit` run) and otherwise starts a local Ray owned by this process.
"""

from __future__ import annotations

import os

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
    for k, v in worker_env().items():
        os.environ.setdefault(k, v)
    runtime_env = {"env_vars": worker_env()}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=not quiet)
        return ray
    ctx = ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
                   dashboard_host="127.0.0.1", runtime_env=runtime_env,
                   log_to_driver=not quiet, logging_level="WARNING")
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
    return ray
