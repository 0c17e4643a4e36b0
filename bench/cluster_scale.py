"""Benchmark: one node against two on this machine: ranker training, run storage on S3 against a local path, and
Recommend QPS with the ranker's replicas on one node or on two (issue 24).

    python -m bench.cluster_scale [--bundle BUNDLE] [--quick] [--epochs N] [--seconds S] [--out R.json] [--plan]

A real two-node Ray cluster on this machine (cluster.local_cluster: `ray start --head` with 2 CPUs and `ray start
--address` with 2 CPUs, each its own temp dir and ports; each node advertises one `node_slot`), moto's S3 server on
loopback, and Magazine 5-core from the data root prepared once into the work dir. Phases, each `results[]` entry
``{phase, nodes, workers, samples_per_s | qps, seconds}``:

* ``train_1node``: the tiny ranker (cluster.train_ranker's component training) with 2 Ray Train + DeepSpeed
  workers, both on the head (`dist.worker_resources: {head_node: 1}`), run storage a local path;
* ``train_2node``: the same with one worker on each node (`{node_slot: 1}`), run storage the same local path
  (readable from both only because both nodes are this machine);
* ``train_2node_s3``: as train_2node with run storage and checkpoints (one every epoch) in the S3 bucket;
* ``serve_1node`` / ``serve_2node`` (with ``--bundle``): `prefmine serve --placement` on the cluster, one proxy
  on the head, ingress and encoder on the head, two ranker replicas both on the head or one on each node; a
  closed-loop gRPC load (bench.serve_latency's) at ``--concurrency`` for ``--seconds``.

Training figures are means over the epochs after the first (prefmine.scaling): ``samples_per_s`` and
``epoch_seconds`` the training steps alone, ``epoch_period_s`` one epoch with its evaluation and its checkpoint
written to the run storage (the storage comparison); ``seconds`` is the phase's wall time, start-up included.
The JSON records the machine, the date, the 1-minute load average before and after each phase, and each
comparison with its baseline. What one machine cannot show: bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, add_common, data_root, default_out, print_plan, require

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
HEAD, SLOT, WORKER = "head_node", "node_slot", "worker_node"
SERVE_PLACEMENTS = {  # ingress and encoder on the head in both; only the ranker's replicas move
    "serve_1node": {"RankerDeployment": {"num_replicas": 2, "resources": {HEAD: 0.1}}},
    "serve_2node": {"RankerDeployment": {"num_replicas": 2, "max_replicas_per_node": 1}},
}
ON_HEAD = {"RecommenderIngress": {"resources": {HEAD: 0.1}}, "EncoderDeployment": {"resources": {HEAD: 0.1}}}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def train_phase(ds, workdir: Path, phase: str, nodes: int, resources: dict, storage: str, epochs: int) -> dict:
    """One ranker training run on the cluster; its results[] entry."""
    from cluster.ds_train import DistConfig
    from cluster.train_ranker import _train_one
    from prefmine.scaling import training_summary
    from prefmine.train_config import preset

    cfg = dataclasses.replace(preset("tiny").ranker, epochs=epochs, max_epochs=epochs, min_steps=0, blend=False,
                              fusion="none")
    dist = DistConfig(num_workers=2, checkpoint_every=1, log_every=100_000, worker_resources=resources,
                      storage=storage)
    load_before, t0 = load_average(), time.monotonic()
    m = _train_one(ds, workdir / "bundles" / phase, cfg, dist, "ranker", None, run_name=f"{phase}-{time.time():.0f}")
    return {"phase": phase, "nodes": nodes, "workers": 2, **training_summary(m["history"]),
            "seconds": round(time.monotonic() - t0, 1), "epochs": epochs, "storage": storage.split("?")[0] or
            "local path", "load_average": [load_before, load_average()]}


def serve_phase(cluster, bundle: str, workdir: Path, phase: str, port: int, seconds: float,
                concurrency: int) -> dict:
    """`prefmine serve --placement` on the cluster (the application deleted after), and its QPS under load. Every
    phase uses the same gRPC `port`: Serve's proxy outlives the application, and a later `serve.start` on a
    cluster where Serve runs keeps the port it was first given."""
    import yaml

    from bench.serve_latency import _start, _stop, known_users, run_grpc_load
    placement = workdir / f"{phase}.yaml"
    placement.write_text(yaml.safe_dump({"proxy_location": "HeadOnly",
                                         "deployments": {**ON_HEAD, **SERVE_PLACEMENTS[phase]}}))
    code = (f"import sys; from serve.run import run_serve; sys.exit(run_serve({bundle!r}, {port}, "
            f"address='127.0.0.1:{cluster.gcs}', feedback_db={str(workdir / 'feedback.sqlite')!r}, "
            f"placement={str(placement)!r}, insecure=True, rate_limit=0))")
    load_before, t0 = load_average(), time.monotonic()
    proc = _start([sys.executable, "-c", code], "prefmine serve: ready")
    try:
        stats = run_grpc_load(f"127.0.0.1:{port}", known_users(bundle), 10, concurrency, seconds,
                              warmup=min(5.0, seconds / 4))
    finally:
        _stop(proc)
    return {"phase": phase, "nodes": 1 if phase == "serve_1node" else 2, "workers": 2, "qps": stats["qps"],
            "seconds": round(seconds, 1), "concurrency": concurrency, "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"], "errors": stats["errors"], "wall_seconds": round(time.monotonic() - t0, 1),
            "load_average": [load_before, load_average()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster_scale", description=__doc__.splitlines()[0])
    add_common(ap, "cluster_scale")
    ap.add_argument("--quick", action="store_true", help="3 epochs and 10 s of load (a smoke run)")
    ap.add_argument("--bundle", default=None, help="a trained bundle to serve (no bundle: no serving phases)")
    ap.add_argument("--epochs", type=int, default=0, help="ranker epochs per training phase (default 10; quick 3)")
    ap.add_argument("--seconds", type=float, default=0, help="seconds of load per serving phase (default 30)")
    ap.add_argument("--concurrency", type=int, default=8, help="closed-loop gRPC clients per serving phase")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "bench" / "cluster_scale"),
                    help="prepared data (kept between runs), bundles and run storage")
    a = ap.parse_args(argv)
    from bench.policy import CATEGORY, RAW_FILES

    epochs = a.epochs or (3 if a.quick else 10)
    seconds = a.seconds or (10.0 if a.quick else 30.0)
    out = Path(a.out) if a.out else default_out("cluster_scale", a.quick)
    workdir = Path(a.workdir)
    inputs = [data_root() / "amazon2018" / CATEGORY / name for name in RAW_FILES]
    if a.bundle:
        inputs.append(Path(a.bundle) / "manifest.json")
    if a.plan:
        return print_plan("cluster_scale", inputs=[str(p) for p in inputs], workdir=workdir, epochs=epochs,
                          serve_seconds=seconds if a.bundle else None, concurrency=a.concurrency,
                          phases=["train_1node", "train_2node", "train_2node_s3",
                                  *(SERVE_PLACEMENTS if a.bundle else [])], out=out)
    require(inputs)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: no log line per S3 request
    os.environ.update(CREDENTIALS)  # this process reads the bucket too; the nodes get them in their environment
    os.environ.update(OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    import ray

    from bench.data_scale import machine
    from bench.policy import _default_data
    from cluster.local_cluster import ray_cluster, s3_bucket
    from prefmine.data.dataset import load_dataset
    from prefmine.scaling import compare

    workdir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(_default_data(workdir))
    results: list[dict] = []
    t0 = time.monotonic()
    with s3_bucket("prefmine-bench", "runs") as bucket, \
            ray_cluster(Path(tempfile.mkdtemp(prefix="cluster-scale-", dir=workdir)), head_cpus=2,
                        workers=((2, {WORKER: 2, SLOT: 1}),), env=CREDENTIALS,
                        head_resources={HEAD: 2, SLOT: 1}) as cluster:
        ray.init(address=f"127.0.0.1:{cluster.gcs}", logging_level="WARNING")
        local = str(workdir / "run-storage")
        for phase, nodes, resources, storage in (("train_1node", 1, {HEAD: 1}, local),
                                                 ("train_2node", 2, {SLOT: 1}, local),
                                                 ("train_2node_s3", 2, {SLOT: 1}, bucket)):
            results.append(train_phase(ds, workdir, phase, nodes, resources, storage, epochs))
            print(json.dumps(results[-1]), flush=True)
        ray.shutdown()
        if a.bundle:
            from serve.run import free_port

            port = free_port()
            for phase in SERVE_PLACEMENTS:
                results.append(serve_phase(cluster, str(Path(a.bundle).resolve()), workdir, phase, port, seconds,
                                           a.concurrency))
                print(json.dumps(results[-1]), flush=True)
    comparisons = [compare(results, "train_2node", "train_1node", "samples_per_s"),
                   compare(results, "train_2node", "train_1node", "epoch_period_s"),
                   compare(results, "train_2node_s3", "train_2node", "samples_per_s"),
                   compare(results, "train_2node_s3", "train_2node", "epoch_period_s")]
    if a.bundle:
        comparisons.append(compare(results, "serve_2node", "serve_1node", "qps"))
    report = {"bench": "cluster_scale", "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                    time.gmtime()),
              "settings": {"cluster": "head 2 CPUs + worker node 2 CPUs on this machine (cluster.local_cluster)",
                           "object_store": "moto S3 server on 127.0.0.1", "data": f"{CATEGORY} 5-core",
                           "ranker": "tiny preset, ID-only, checkpoint every epoch", "epochs": epochs,
                           "bundle": a.bundle, "serve_seconds": seconds, "concurrency": a.concurrency},
              "results": results, "comparisons": comparisons, "seconds": round(time.monotonic() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"out": str(out), "comparisons": comparisons}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
