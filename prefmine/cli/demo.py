"""The main job (`prefmine demo`): real data -> prepare -> train (encoder, ranker, policy) -> evaluate -> serve
over gRPC -> real requests -> shut down, on a local Ray this process starts itself.

Raw files come from `--raw`, else $PREFMINE_DATA_DIR (laid out like ../shared/data), else they are downloaded
from the publishers into the work dir. Serving runs as the real `prefmine serve` command in a child process
(its own Ray, after the training Ray has been shut down), and is queried with the real gRPC client.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DATASETS = {
    "magazine": {"source": "amazon2018", "category": "Magazine_Subscriptions"},
    "movielens": {"source": "movielens", "category": None},
}


def _raw_root(dataset: str, raw: str | None, workdir: Path) -> Path:
    spec = DATASETS[dataset]
    if raw:
        return Path(raw) / spec["source"]
    if os.environ.get("PREFMINE_DATA_DIR"):
        return Path(os.environ["PREFMINE_DATA_DIR"]) / spec["source"]
    from prefmine.data.download import download

    return download(spec["source"], workdir / "raw", spec["category"] or "Magazine_Subscriptions")


def _raw_users(dataset: str, raw_root: Path, n: int = 3) -> list[str]:
    """A few real raw user ids with long histories, to query the server as a client application would."""
    from prefmine.data.sources import read_rows

    inter = read_rows(DATASETS[dataset]["source"], raw_root, DATASETS[dataset]["category"])
    return [str(u) for u in inter["user"].value_counts().index[:n]]


def catalog_store(bundle: Path) -> str | None:
    """The feedback store the demo's server writes to (serve.app.default_feedback_db: beside the bundle, or
    $PREFMINE_FEEDBACK_DB), when an earlier run (or an operator's `prefmine catalog load`) left one: its catalogue
    changes are folded into the data set the bundle is trained from (`prepare --catalog-feedback`), so the next
    bundle holds the items written while the last one served. None when there is no store yet."""
    from serve.app import default_feedback_db

    location = default_feedback_db(bundle)
    if "://" in location:  # a PostgreSQL DSN: the server's store exists wherever it is configured
        return location
    return location if Path(location).is_file() else None


def _start_server(bundle: Path, port: int, log_path: Path, timeout_s: float = 420.0):
    # --insecure: a throwaway server for the demo's own client, started and stopped here, without API keys
    cmd = [sys.executable, "-m", "prefmine.cli", "serve", "--bundle", str(bundle), "--grpc-port", str(port),
           "--insecure"]
    print("$ prefmine serve --bundle", bundle, "--grpc-port", port, "--insecure", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    log = open(log_path, "w")  # noqa: SIM115 - closed by the reader thread

    def _pump():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines.put(line)
        log.close()
        lines.put(None)

    threading.Thread(target=_pump, daemon=True).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"prefmine serve exited with {proc.wait()} before ready; log: {log_path}")
        if "prefmine serve:" in line or "error" in line.lower():
            print("  serve| " + line.rstrip(), flush=True)
        if line.startswith("prefmine serve:") and "ready" in line:
            return proc
    proc.send_signal(signal.SIGTERM)
    raise TimeoutError(f"prefmine serve not ready within {timeout_s:.0f} s; log: {log_path}")


def _stop_server(proc, timeout_s: float = 90.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def run_demo(dataset: str = "magazine", workdir: str | Path = "runs/demo", raw: str | None = None,
             grpc_port: int = 0, preset: str = "tiny") -> int:
    import grpc

    from cluster.evaluate_job import run_evaluation
    from cluster.pipeline import train_bundle
    from cluster.prepare_job import ray_data_runner
    from cluster.ray_env import ensure_ray
    from prefmine.data.prepare import prepare
    from prefmine.data.privacy import Pseudonymiser
    from prefmine.progress import format_duration
    from serve.client import format_response, model_info, recommend
    from serve.run import free_port

    t_start = time.time()
    spec = DATASETS[dataset]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFMINE_LOG_DIR", str(workdir / "logs"))  # Ray's own log records (cluster.ray_env)
    timings = {}

    def done(stage: str) -> None:
        print(f"   {stage} done in {format_duration(timings[stage])}", flush=True)

    print(f"== 1/5 prepare {dataset}", flush=True)
    t = time.time()
    raw_root = _raw_root(dataset, raw, workdir)
    data_dir = workdir / "data" / dataset
    bundle = workdir / "bundles" / dataset
    changes = catalog_store(bundle)  # catalogue writes an earlier run's server logged: the next bundle holds them
    ray = ensure_ray()
    manifest = prepare(spec["source"], raw_root, data_dir, spec["category"],
                       pseudonymiser=Pseudonymiser(allow_demo=True), runner=ray_data_runner, engine="ray-data",
                       progress=sys.stderr, catalog_feedback=changes)
    print(f"   {manifest['counts']}", flush=True)
    if changes:
        print(f"   catalogue changes folded from {changes}: {manifest['catalog']}", flush=True)
    timings["prepare"] = time.time() - t
    done("prepare")

    print("== 2/5 train encoder -> ranker -> policy (Ray Train + DeepSpeed, RLlib)", flush=True)
    t = time.time()
    train_bundle(data_dir, bundle, preset=preset)
    ray.shutdown()
    timings["train"] = time.time() - t
    done("train")

    print("== 3/5 evaluate (test split, full catalogue ranking)", flush=True)
    t = time.time()
    report = run_evaluation(data_dir, bundle, workdir / f"{dataset}-metrics.json")
    timings["evaluate"] = time.time() - t
    done("evaluate")

    print("== 4/5 serve over gRPC (Ray Serve)", flush=True)
    t = time.time()
    port = grpc_port or free_port()
    proc = _start_server(bundle, port, workdir / f"{dataset}-serve.log")
    timings["serve_start"] = time.time() - t
    done("serve_start")
    addr = f"127.0.0.1:{port}"
    try:
        print("== 5/5 gRPC requests", flush=True)
        info = model_info(addr)
        print(f"ModelInfo: bundle {info.bundle_version}, components "
              f"{[c.name for c in info.components]}", flush=True)
        for user in _raw_users(dataset, raw_root) + ["new-visitor-0001"]:
            t1 = time.time()
            resp = recommend(addr, user, 5)
            print(f"\nRecommend(user={user!r}, k=5) in {1000 * (time.time() - t1):.1f} ms "
                  f"(cold_start={resp.cold_start})\n{format_response(resp)}", flush=True)
        try:
            recommend(addr, "someone", 0)
        except grpc.RpcError as e:
            print(f"\nRecommend(k=0) -> {e.code().name}: {e.details()}", flush=True)
    finally:
        code = _stop_server(proc)
        print(f"server stopped (exit {code})", flush=True)

    from cluster.evaluate_job import format_policy_table
    from prefmine.evaluate import format_table

    print("\n== metrics", flush=True)
    print(format_table(report))
    if "policy" in report:
        print(format_policy_table(report["policy"]))
    timings["total"] = time.time() - t_start
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), flush=True)
    return 0 if code == 0 else 1
