"""A real two-node Ray cluster on this machine (issue 24 items 2 and 3): the session's training cluster.

`conftest.start_training_cluster`: `ray start --head` plus a `ray start --address` worker node, each with its own
temp dir and working directory; the worker node alone advertises the custom resource `worker_node`, and the tiny
bundle's training config asks for it (`dist.worker_resources`, `embed.actor_resources`), so training workers and
embedding actors can run only there. The only storage the nodes share is an S3 server on loopback (moto, as in
tests/test_storage.py): the prepared dataset (`--data`), run storage and checkpoints (`--storage`), the encoder
the actors load, the bundle (`--out`), the evaluation reports. Each node has the (fake) credentials in the
environment it was started with, as a real node has its own; none travel through Ray or the URI. The session's
tiny bundle is trained there (`conftest.train_tiny_bundle`: prepare on the submitting machine, then encoder, ranker
and policy through `prefmine jobs submit`); these tests check where it ran, evaluate it with a second job, lose
a node in training, and serve from both nodes.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import HEAD_RESOURCE, WORKER_RESOURCE
from live_server import prefmine_cli

from prefmine import storage, store
from prefmine.bundle import is_published

pytestmark = pytest.mark.slow

RESOURCE = WORKER_RESOURCE
NODE_LOSS_EPOCHS = 4


@pytest.fixture(scope="module")
def two_nodes(training_cluster):
    return training_cluster.cluster


@pytest.fixture(scope="module")
def bucket(training_cluster):
    return training_cluster.bucket


def actors_by_class(address: str, part: str) -> list:
    """Every actor (alive or dead) of the cluster whose class name contains `part` (Ray's state API, with the
    resources each asked for)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=address, limit=10_000, detail=True, raise_on_missing_output=False)
            if part in a.class_name]


def asked_for_the_resource(actor) -> bool:
    """Whether the actor was scheduled with RESOURCE (in a placement group Ray renames it RESOURCE_group_...)."""
    return any(k == RESOURCE or k.startswith(f"{RESOURCE}_group_") for k in actor.required_resources or {})


def test_the_submitted_pipeline_trained_on_the_worker_node_with_every_artefact_in_the_object_store(
        two_nodes, tiny_bundle_job):
    """The pipeline submitted through `prefmine jobs submit --wait` succeeded, `jobs status` and `jobs logs` report
    it, the project travelled as its working_dir; every Ray Train worker (encoder MLM, rating and contrastive
    stages, both rankers) and every embedding actor ran on the worker node because the config asked for it (the
    head had the CPUs to take them); every run's checkpoint and logs, the encoder the actors loaded and the
    bundle are in the bucket."""
    job = tiny_bundle_job
    assert job.submit.returncode == 0, job.submit.stdout[-2000:] + job.submit.stderr[-4000:]
    assert job.job_id.startswith("raysubmit_"), job.submit.stdout[-2000:]
    updates = [ln.split(": ")[1] for ln in job.submit.stdout.splitlines() if ln.startswith(job.job_id + ":")]
    assert updates and updates[-1] == "SUCCEEDED", job.submit.stdout[-2000:]
    assert job.status.returncode == 0 and job.status.stdout.strip() == "SUCCEEDED"
    assert job.logs.returncode == 0 and f"bundle written: {job.bundle_uri}" in job.logs.stdout  # the job's driver
    assert job.runtime_env["working_dir"].startswith(("gcs://", "file://"))
    assert job.runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"

    worker_node = two_nodes.workers[0].node_id
    trainers, embedders = actors_by_class(two_nodes.address, "RayTrainWorker"), actors_by_class(
        two_nodes.address, "TextEmbedder")
    assert len(trainers) >= 2 and embedders, (trainers, embedders)
    assert {a.node_id for a in trainers} == {worker_node}, trainers
    assert {a.node_id for a in embedders} == {worker_node}, embedders
    assert all(asked_for_the_resource(a) for a in trainers + embedders), [a.required_resources for a in
                                                                          trainers + embedders]

    fs, root = storage.resolve(job.storage_uri)
    stored = storage.list_files(fs, root)
    for stage in ("encoder-mlm-", "encoder-rating-", "encoder-contrastive-", "ranker-", "ranker_id_only-"):
        runs = [f for f in stored if f.startswith(f"train/{stage}")]
        assert any("/checkpoint_" in f and f.endswith("/model.pt") for f in runs), (stage, stored)
        assert any(f.endswith("/metrics.jsonl") for f in runs), (stage, stored)  # uploaded by rank 0
    assert any(f.startswith("encoder/") and f.endswith(storage.CONTENT) for f in stored), stored
    assert is_published(job.bundle_uri)
    manifest = store.read_manifest(job.bundle_uri)
    assert {"encoder", "ranker", "policy"} <= set(manifest["components"])
    policy = manifest["components"]["policy"]["metrics"]
    assert policy["iterations"] >= 1 and policy["checkpoint"].startswith("s3://")  # RLlib's checkpoints went there
    assert not [f for f in stored if f.startswith("policy/")]  # and were removed once the policy was exported
    # the bundle keeps each run's logs and the list of its checkpoint's files, as with local run storage
    local = job.bundle
    assert (local / "manifest.json").read_bytes() == fs.open_input_stream(
        f"{storage.resolve(job.bundle_uri)[1]}/manifest.json").read()
    for run in sorted(p for p in (local / ".train").iterdir()):
        assert (run / "metrics.jsonl").is_file() and (run / "tensorboard").is_dir(), run
        assert json.loads((run / "checkpoint.json").read_text())["stored_at"].startswith("s3://"), run


def test_evaluation_submitted_as_a_job_reads_data_and_bundle_from_the_store(two_nodes, tiny_bundle_job, tmp_path):
    """`prefmine evaluate --data s3://... --bundle s3://...` as a job on the cluster: the contract JSON (every model
    at 5/10/20, the policy against the heuristics), and the report files uploaded beside the bundle in the bucket,
    its cached copy left as published."""
    job = tiny_bundle_job
    out = tmp_path / "metrics.json"
    r = prefmine_cli("jobs", "submit", "--address", two_nodes.address, "--wait", "--timeout", "900", "--",
                     "python", "-m", "prefmine.cli", "evaluate", "--data", job.data_uri, "--bundle", job.bundle_uri,
                     "--json", str(out), "--policy-sessions", "200", timeout=960)
    assert r.returncode == 0 and "SUCCEEDED" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    base = {"popularity", "item_knn", "prefmine_id_only", "prefmine", "served"}  # served: Recommend's own lists
    # with a blend saved beside a ranker, that ranker alone is reported too (ranker/blend.py)
    assert base <= set(report["models"]) <= base | {"prefmine_no_blend", "prefmine_id_only_no_blend"}
    for m in report["models"].values():
        for k in (5, 10, 20):
            for name in ("NDCG", "Recall", "MRR", "Precision", "F1", "HR", "Coverage"):
                assert 0.0 <= m[f"{name}@{k}"] <= 1.0
    assert report["users"] == 348
    assert {"learned", "greedy", "popularity", "random"} <= set(report["policy"])
    fs, root = storage.resolve(storage.join(job.bundle_uri, "reports"))
    assert {"evaluation.json", "evaluation.md", "evaluation_ndcg_at_k.png"} <= set(storage.list_files(fs, root))
    assert json.loads(fs.open_input_stream(f"{root}/evaluation.json").read()) == report
    # the job's driver fetched the bundle into the head's cache (its node's) and left that copy as published
    from cluster.local_cluster import BUNDLE_CACHE

    version = store.read_manifest(job.bundle_uri)["version"]
    copies = [p for p in (two_nodes.base / "head" / BUNDLE_CACHE).iterdir() if p.name.endswith(f"-{version}")]
    assert len(copies) == 1, copies
    assert store.fetch(copies[0]) == copies[0] and not (copies[0] / "reports").exists()


# tests/test_resume.py's run (its task, a checkpoint every epoch) as a job whose workers need the custom resource
# argv[3] and whose run storage is the bucket; run from the job's working_dir (this tree, tests/ included)
RESUME_DRIVER = f"""
import sys
sys.path.insert(0, "tests")
from test_resume import _task
from cluster.ds_train import DistConfig, train
dist = DistConfig(num_workers=1, checkpoint_every=1, max_failures=2, log_every=1000,
                  worker_resources={{sys.argv[3]: 1}})
train(_task({NODE_LOSS_EPOCHS}), sys.argv[1], sys.argv[2], dist)
"""


class StoredFile:
    """A file in the bucket with the read_text() test_resume.registered_checkpoint reads a snapshot through."""

    def __init__(self, uri: str):
        self.fs, self.path = storage.resolve(uri)

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode()


def latest_checkpoint(snapshot: StoredFile) -> str | None:
    """The directory name of the run's latest registered checkpoint (Ray Train's checkpoint-manager snapshot)."""
    import json

    try:
        return (json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (OSError, ValueError):
        return None


def final_checkpoint(uri: str, name: str) -> tuple[dict, list]:
    """(model.pt state dict, history) of the run's latest registered checkpoint, read from the bucket (a worker
    group killed mid-save may leave an unregistered checkpoint directory beside it)."""
    import io
    import json

    import torch

    fs, root = storage.resolve(uri)
    last = latest_checkpoint(StoredFile(storage.join(uri, name, "checkpoint_manager_snapshot.json")))
    assert last, f"run {name} registered no checkpoint"
    with fs.open_input_stream(f"{root}/{name}/{last}/model.pt") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    with fs.open_input_stream(f"{root}/{name}/{last}/state.json") as f:
        return state, json.loads(f.read().decode())["history"]


def run_job(cluster, name: str, uri: str, resource: str) -> str:
    """Submit RESUME_DRIVER for run `name`, its worker on a node with `resource`, through `prefmine jobs submit`
    without waiting; the job id."""
    r = prefmine_cli("jobs", "submit", "--address", cluster.address, "--", "python", "-c", RESUME_DRIVER, name, uri,
                     resource, timeout=960)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout.split()[1]


def wait_job(client, job: str, started: float, timeout_s: float = 900) -> None:
    """Wait until `job` ends and assert it succeeded."""
    import time

    while str(client.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() - started < timeout_s, f"job {job} did not end in {timeout_s:.0f} s"
        time.sleep(2)
    assert str(client.get_job_status(job)) == "SUCCEEDED", client.get_job_logs(job)[-4000:]


def test_losing_the_worker_node_mid_training_resumes_on_a_replacement_from_the_object_store(two_nodes, bucket):
    """Kill the worker node's raylet after the first registered checkpoint, start a replacement node with the
    same resource: Ray Train restarts the worker group there from the checkpoint in the bucket and ends on the
    weights of an uninterrupted run (the same task on the head node at the same time, so the test waits for one
    run, not two in a row)."""
    import time

    import torch
    from ray.job_submission import JobSubmissionClient
    from test_resume import registered_checkpoint

    uri = storage.join(bucket, "resume")
    client = JobSubmissionClient(two_nodes.address)
    started = time.monotonic()
    clean_job = run_job(two_nodes, "uninterrupted", uri, HEAD_RESOURCE)
    job = run_job(two_nodes, "node-lost", uri, RESOURCE)
    snapshot = StoredFile(storage.join(uri, "node-lost", "checkpoint_manager_snapshot.json"))
    deadline = time.time() + 600
    while not registered_checkpoint(snapshot):
        assert time.time() < deadline, "no checkpoint registered in 600 s"
        time.sleep(0.5)
    at_kill = latest_checkpoint(snapshot)
    lost = two_nodes.workers[-1]
    raylets = lost.processes("raylet")
    assert len(raylets) == 1, raylets
    os.kill(raylets[0], signal.SIGKILL)
    t_kill = time.monotonic()
    replacement = two_nodes.add_worker(2, {RESOURCE: 2})
    joined = time.monotonic() - t_kill
    while latest_checkpoint(snapshot) in (at_kill, None):  # the restarted group's first checkpoint after the one at the kill
        assert time.monotonic() - t_kill < 600, "no checkpoint after the kill in 600 s"
        time.sleep(0.5)
    recovered = time.monotonic() - t_kill
    wait_job(client, job, t_kill)
    wait_job(client, clean_job, started)

    trainers = actors_by_class(two_nodes.address, "RayTrainWorker")
    assert replacement.node_id in {a.node_id for a in trainers}, trainers  # the group restarted there
    a, clean_history = final_checkpoint(uri, "uninterrupted")
    b, history = final_checkpoint(uri, "node-lost")
    print(f"node lost: replacement joined {joined:.1f} s after the kill, first checkpoint after the kill "
          f"{recovered:.1f} s after it (the last epoch took {history[-1]['epoch_seconds']:.1f} s)")
    assert [h["epoch"] for h in history] == list(range(NODE_LOSS_EPOCHS))
    assert history[-1]["restarts"] >= 1 and clean_history[-1]["restarts"] == 0
    for k in a:  # as tests/test_resume.py: the same data order and optimizer state after the restart
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert abs(history[-1]["loss"] - clean_history[-1]["loss"]) < 1e-4


# `prefmine serve --placement`: one proxy (both nodes share 127.0.0.1, so a second proxy could not bind the gRPC
# port), two ranker replicas at most one a node (so one on each), the encoder only where RESOURCE is
SERVE_PLACEMENT = f"""
proxy_location: HeadOnly
deployments:
  RankerDeployment: {{num_replicas: 2, max_replicas_per_node: 1}}
  EncoderDeployment: {{resources: {{{RESOURCE}: 1}}}}
"""


def serve_replicas(address: str, deployment: str) -> list[dict]:
    """The RUNNING replicas of the prefmine application's `deployment` (Serve's REST API on the head's
    dashboard: replica id, node id, actor id)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{address}/api/serve/applications/", timeout=30) as r:
        apps = json.load(r)["applications"]
    replicas = apps["prefmine"]["deployments"][deployment]["replicas"]
    return [x for x in replicas if x["state"] == "RUNNING"]


def requests_by_replica(head_temp_dir, deployment: str) -> dict[str, float]:
    """{replica id: requests it processed} for `deployment`, summed from Serve's own per-replica counter on every
    node's Prometheus endpoint (the head's service-discovery file lists them, as Prometheus reads it)."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    targets = json.loads((head_temp_dir / "prom_metrics_service_discovery.json").read_text())[0]["targets"]
    counts: dict[str, float] = {}
    for target in targets:
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=30) as r:
                text = r.read().decode()
        except OSError:
            continue  # a node that left (the node-loss test's killed worker) has no endpoint any more
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (s.name == "ray_serve_deployment_request_counter_total"
                        and s.labels.get("deployment") == deployment):
                    counts[s.labels["replica"]] = counts.get(s.labels["replica"], 0.0) + s.value
    return counts


def test_serve_replicas_on_both_nodes_answer_grpc_through_one_proxy(two_nodes, bundle_path, bucket, tmp_path):
    """`prefmine serve --placement --bundle s3://...` on the two-node cluster, API keys on, loopback: the bundle is
    published to the bucket from a staging folder that is deleted before serving, and the driver checks it there
    without downloading it (its own cache stays empty); every node's replicas fetch it into that node's cache.
    Ray's state shows the ranker's replicas on both nodes and the encoder's where RESOURCE is, one proxy on the
    head, and Serve's per-replica request counters (every node's metrics endpoint) show Recommend calls answered
    by the replica on each node. Then a new version is published at the URI and SIGHUP rolls it in: ModelInfo
    reports it and every node's cache holds it too."""
    import shutil
    import sys
    import time

    from conftest import bundle_versions
    from live_server import API_KEY, keys_file_for, launch
    from ray.util.state import list_nodes
    from test_serve_faults import known_users

    from cluster.local_cluster import BUNDLE_CACHE
    from prefmine import store
    from serve.client import model_info, recommend
    from serve.run import free_port

    staging = tmp_path / "staging"
    shutil.copytree(bundle_path, staging)
    location = storage.join(bucket, "serve", "bundle")
    store.publish(staging, location)
    shutil.rmtree(staging)  # nothing on the driver's disk is left to read the bundle from
    version = store.read_manifest(location)["version"]
    placement = tmp_path / "placement.yaml"
    placement.write_text(SERVE_PLACEMENT)
    port = free_port()
    driver_cache = tmp_path / "driver-cache"
    code = (f"import os, sys; os.environ[{store.CACHE_ENV!r}] = {str(driver_cache)!r}; "
            f"from serve.run import run_serve; sys.exit(run_serve({location!r}, {port}, "
            f"address='127.0.0.1:{two_nodes.gcs}', api_keys_file={str(keys_file_for(tmp_path / 'keys'))!r}, "
            f"feedback_db={str(tmp_path / 'feedback.sqlite')!r}, placement={str(placement)!r}, rate_limit=0))")
    server = launch([sys.executable, "-c", code], f"127.0.0.1:{port}", ready_text=f"bundle {version}")
    try:
        head = next(n.node_id for n in list_nodes(address=two_nodes.address, raise_on_missing_output=False,
                                                  filters=[("is_head_node", "=", True)]))
        rankers = serve_replicas(two_nodes.address, "RankerDeployment")
        nodes = {r["node_id"]: r["replica_id"] for r in rankers}
        assert len(rankers) == 2 and len(nodes) == 2 and head in nodes, rankers
        # each node's replicas fetched the version into that node's own cache, whole; the driver fetched nothing
        caches = {head: two_nodes.base / "head" / BUNDLE_CACHE,
                  **{w.node_id: w.cwd / BUNDLE_CACHE for w in two_nodes.workers}}
        for node in nodes:  # (the head's cache also holds the copy the evaluation job fetched from its location)
            copies = sorted(p.name for p in caches[node].iterdir() if not p.name.startswith("."))
            copy = store.cache_path(location, version, store.StoreConfig(cache_dir=str(caches[node])))
            assert copy.name in copies, (node, copies)
            assert store.fetch(copy) == copy  # whole: every file as its manifest lists it
        encoders = serve_replicas(two_nodes.address, "EncoderDeployment")
        workers = {w.node_id for w in two_nodes.workers}
        assert encoders and {e["node_id"] for e in encoders} <= workers, encoders
        encoder_actors = actors_by_class(two_nodes.address, "EncoderDeployment")
        assert all(asked_for_the_resource(a) for a in encoder_actors if a.state == "ALIVE"), encoder_actors
        proxies = [a for a in actors_by_class(two_nodes.address, "ProxyActor") if a.state == "ALIVE"]
        assert [p.node_id for p in proxies] == [head], proxies

        calls = 0
        for user in known_users(bundle_path, 20) * 2:
            assert recommend(server.addr, user, 5, api_key=API_KEY, timeout=30.0).items
            calls += 1
        deadline = time.monotonic() + 90  # Ray's metrics agents report every few seconds
        while True:
            counts = requests_by_replica(two_nodes.head_temp_dir, "RankerDeployment")
            per_node = {node: counts.get(replica, 0.0) for node, replica in nodes.items()}
            if all(v > 0 for v in per_node.values()) and sum(per_node.values()) >= calls:
                break
            assert time.monotonic() < deadline, (per_node, counts, calls)
            time.sleep(2)
        print(f"ranker requests per node after {calls} Recommend calls through the head's proxy: {per_node}")

        # SIGHUP rolls in the version published at the URI by now; each node fetches it into its own cache
        dirs, names = bundle_versions(bundle_path, tmp_path / "next", {"next": "-next"})
        store.publish(dirs["next"], location)
        shutil.rmtree(tmp_path / "next")
        t_hup = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        while not any("prefmine serve: rolled out" in x or "rollout of" in x for x in server.lines):
            assert time.monotonic() - t_hup < 300, "no rollout within 300 s:\n" + "".join(server.lines[-40:])
            time.sleep(0.2)
        line = next(x for x in server.lines if "prefmine serve: rolled out" in x or "rollout of" in x)
        print(line.strip())
        assert f"rolled out bundle {names['next']}" in line, line
        assert model_info(server.addr, api_key=API_KEY, timeout=30.0).bundle_version == names["next"]
        for node in nodes:
            assert any(p.name.endswith(f"-{names['next']}") for p in caches[node].iterdir()), node
        assert not driver_cache.exists()
    finally:
        assert server.stop() == 0, "".join(server.lines[-40:])
