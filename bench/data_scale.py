"""Benchmark: `prefmine data prepare` on synthetic platform event logs of growing size.

For each size a log is generated with `prefmine data synth` (not timed), then prepared twice as a user would run
it, each in a fresh process: with Ray Data (the default; it starts its own local Ray) and, as the baseline, with
`--local` (the same stages in one process). Reported per run: wall seconds, events/s, and peak memory of the whole
process tree (driver, Ray's raylet/GCS and every worker), sampled every 0.2 s as the sum of proportional set
size (PSS, so pages shared between processes count once) and, for reference, the sum of RSS.

    python -m bench.data_scale [--out RESULT.json] [--quick] [--plan] [--sizes 1000000 10000000]

Goal (issue 3): 10M events in under 10 minutes on 2 cores with peak memory under 4 GiB, and cost that grows
linearly: `linearity` = (seconds per event at the largest size) / (seconds per event at the smallest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import add_common, default_out, print_plan

ROOT = Path(__file__).resolve().parents[1]


def _tree_memory(pid: int) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) in MiB over `pid` and all its descendants."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    pss = rss = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pss / 1024, rss / 1024


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`, sampling the memory of its process tree; returns seconds, peaks and the JSON it printed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = {"pss": 0.0, "rss": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pss, rss = _tree_memory(proc.pid)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": seconds, "peak_pss_mb": round(peak["pss"], 1), "peak_rss_mb": round(peak["rss"], 1),
            "report": json.loads(out[out.index("{"):])}


def machine() -> dict:
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpu": gpu,
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "data_scale")
    ap.add_argument("--quick", action="store_true", help="100k and 1M events (a few minutes)")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--workdir", help="where logs and datasets go (default: a temp dir, removed afterwards)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the in-process baseline runs")
    a = ap.parse_args(argv)
    sizes = a.sizes or ([100_000, 1_000_000] if a.quick else [1_000_000, 10_000_000])
    out_path = Path(a.out) if a.out else default_out("data_scale", a.quick)
    if a.plan:
        return print_plan("data_scale", source="prefmine data synth (no input data)", sizes=sizes, out=out_path,
                          workdir=a.workdir or "a temp dir, removed afterwards", baseline=not a.no_baseline)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefmine-bench-data-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFMINE_PSEUDONYM_KEY": "bench-data-scale-key",
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    prefmine = [sys.executable, "-m", "prefmine.cli"]
    result = {"bench": "data_scale", "machine": machine(), "settings": {
        "sizes": sizes, "source": "events (prefmine data synth, Parquet parts of 1M events)",
        "users_per_event": 0.1, "items_per_event": 0.05, "memory": "peak over the process tree, sampled 0.2 s"},
        "sizes": [], "baseline_local": []}
    try:
        for n in sizes:
            raw = work / f"log-{n}"
            if not raw.exists():
                t = time.perf_counter()
                subprocess.run(prefmine + ["data", "synth", "--users", str(max(n // 10, 10)), "--items",
                                           str(max(n // 20, 10)), "--events", str(n), "--out", str(raw)],
                               cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
                print(f"synth {n:,} events: {time.perf_counter() - t:.1f} s", flush=True)
            runs = [("sizes", [])] + ([] if a.no_baseline else [("baseline_local", ["--local"])])
            for key, extra in runs:
                out = work / f"data-{n}-{key}"
                r = run_measured(prefmine + ["data", "prepare", "--source", "events", "--raw", str(raw), "--out",
                                             str(out), *extra], env)
                rep = r["report"]
                row = {"events": n, "seconds": round(r["seconds"], 1), "events_per_s": round(n / r["seconds"]),
                       "peak_rss_mb": r["peak_pss_mb"], "peak_rss_sum_mb": r["peak_rss_mb"],
                       "engine": rep["preparation"]["engine"], "chunks": rep["preparation"]["chunks"],
                       "buckets": rep["preparation"]["buckets"],
                       "stage_rows_s": rep["preparation"]["stage_rows_s"],
                       "split_users_s": rep["preparation"]["split_users_s"],
                       "interactions": rep["interactions"], "users": rep["users"], "items": rep["items"]}
                if row["interactions"] != n:
                    raise RuntimeError(f"prepared {row['interactions']} of {n} events")
                result[key].append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(out, ignore_errors=True)
        for key in ("sizes", "baseline_local"):
            rows = result[key]
            if len(rows) >= 2:
                lo, hi = rows[0], rows[-1]
                result[f"linearity_{key}"] = round((hi["seconds"] / hi["events"]) / (lo["seconds"] / lo["events"]), 3)
        result["linearity"] = result.get("linearity_sizes")
        big = result["sizes"][-1]
        result["goal"] = {"events": big["events"], "under_10_min": big["seconds"] < 600,
                          "under_4_gib": big["peak_rss_mb"] < 4096}
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("sizes", "linearity", "goal")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
