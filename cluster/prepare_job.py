"""`prefmine data prepare` on Ray Data: the preparation stages of prefmine.data.prepare run as Ray Data map
operators, one row per task (a file chunk, then a user bucket), streamed over the cluster's CPUs.

Locally this starts a Ray owned by the process (no dashboard: preparation is short and the dashboard costs memory);
under `ray job submit` it joins the cluster. On a multi-node cluster `--out` must be on storage every node sees
(NFS or a mounted bucket), because stage 1 writes its bucketed rows next to the output for stage 2 to read.
Run as `python -m cluster.prepare_job --source ... --raw ... --out ...` (same options as the CLI).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def ray_data_runner(fn: Callable[[dict], dict], tasks: list[dict], stage: str, progress=None) -> list[dict]:
    """Run `fn` over `tasks` with Ray Data (one block per task), returning results in task order; each result
    counts on `progress` (a prefmine.progress.Progress) as it streams back, in place of Ray Data's own bars."""
    import ray.data

    from cluster.ray_env import ensure_ray, route_ray_logs, verbose

    ensure_ray(dashboard=False, quiet=True)
    route_ray_logs()  # ray.data set up its console handler on import
    if not tasks:
        return []
    rows = [{"order": i, "task": json.dumps(t)} for i, t in enumerate(tasks)]

    def run(row: dict) -> dict:
        out = fn(json.loads(row["task"]))
        return {"order": int(row["order"]), "result": json.dumps(out)}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose() and sys.stderr.isatty()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(run, num_cpus=1)
    results = []
    for r in ds.iter_rows():
        results.append(r)
        if progress is not None:
            progress.update()
    return [json.loads(r["result"]) for r in sorted(results, key=lambda r: r["order"])]


def main(argv=None) -> int:
    from prefmine.cli.main import main as cli_main

    return cli_main(["data", "prepare", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
