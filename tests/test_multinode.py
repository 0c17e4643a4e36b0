"""A real two-node Ray cluster on this machine (issue 24 items 2 and 3).

`live_server.ray_cluster`: `ray start --head` plus a `ray start --address` worker node, each with its own temp
dir and working directory; the worker node advertises the custom resource `worker_node`, and the training config
asks for it (`dist.worker_resources`, `embed.actor_resources`), so training workers and embedding actors can run
only there. The only storage the nodes share for training artefacts is an S3 server on loopback (moto, as in
tests/test_storage.py): run storage and checkpoints (`--storage`), the encoder the actors load, the bundle
(`--out`). Each node has the (fake) credentials in the environment it was started with, as a real node has its
own; none travel through Ray or the URI.
"""

from __future__ import annotations

import os
import signal

import pytest
from live_server import prefmine_cli, ray_cluster, s3_bucket

from prefmine import storage
from prefmine.bundle import is_published

pytestmark = pytest.mark.slow

RESOURCE = "worker_node"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
for _k, _v in CREDENTIALS.items():  # this process reads the bucket too (see tests/test_storage.py)
    os.environ.setdefault(_k, _v)

# The smallest encoder stage that still trains through Ray Train + DeepSpeed and embeds through Ray Data: one MLM
# epoch of a one-layer BERT, no fine-tuning stages, a checkpoint after the epoch.
ENCODER_ON_WORKER_NODE = f"""
encoder: {{mlm_epochs: 1, finetune_epochs: 0, contrastive_epochs: 0, vocab_size: 800, hidden: 32, layers: 1,
          heads: 2, intermediate: 64, max_len: 32, max_texts: 1500}}
embed: {{actor_resources: {{{RESOURCE}: 1}}}}
dist: {{num_workers: 1, checkpoint_every: 1, log_every: 1000, worker_resources: {{{RESOURCE}: 1}}}}
"""


@pytest.fixture(scope="module")
def bucket():
    """A fresh bucket on moto's S3 server on 127.0.0.1; yields a URI prefix carrying the endpoint options."""
    with s3_bucket("prefmine-multinode", "prefmine") as uri:
        yield uri


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, bucket):
    """A head (2 CPUs: room for the training workers, were they not told to go elsewhere) and one worker node
    (2 CPUs, `worker_node: 2`)."""
    with ray_cluster(tmp_path_factory.mktemp("cluster"), head_cpus=2, workers=((2, {RESOURCE: 2}),),
                     env=CREDENTIALS) as cluster:
        yield cluster


def actors_by_class(address: str, part: str) -> list:
    """Every actor (alive or dead) of the cluster whose class name contains `part` (Ray's state API, with the
    resources each asked for)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=address, limit=10_000, detail=True, raise_on_missing_output=False)
            if part in a.class_name]


def asked_for_the_resource(actor) -> bool:
    """Whether the actor was scheduled with RESOURCE (in a placement group Ray renames it RESOURCE_group_...)."""
    return any(k == RESOURCE or k.startswith(f"{RESOURCE}_group_") for k in actor.required_resources or {})


def test_submitted_training_runs_on_the_worker_node_with_artefacts_in_the_object_store(two_nodes, bucket,
                                                                                       magazine5, tmp_path):
    cfg = tmp_path / "encoder.yaml"
    cfg.write_text(ENCODER_ON_WORKER_NODE)
    run_storage, out = storage.join(bucket, "runs"), storage.join(bucket, "bundles", "magazine5")
    submit = prefmine_cli("jobs", "submit", "--address", two_nodes.address, "--wait", "--timeout", "900", "--",
                          "python", "-m", "cluster.pipeline", "encoder", "--data", str(magazine5), "--out", out,
                          "--storage", run_storage, "--preset", "tiny", "--config", str(cfg), timeout=960)
    assert submit.returncode == 0 and "SUCCEEDED" in submit.stdout, submit.stdout[-2000:] + submit.stderr[-4000:]

    worker_node = two_nodes.workers[0].node_id
    trainers, embedders = actors_by_class(two_nodes.address, "RayTrainWorker"), actors_by_class(
        two_nodes.address, "TextEmbedder")
    assert trainers and embedders, (trainers, embedders)
    assert {a.node_id for a in trainers} == {worker_node}, trainers
    assert {a.node_id for a in embedders} == {worker_node}, embedders
    # there because the config asked for it (the head had the CPUs to take them too)
    assert all(asked_for_the_resource(a) for a in trainers + embedders), [a.required_resources for a in
                                                                          trainers + embedders]

    fs, root = storage.resolve(run_storage)
    stored = storage.list_files(fs, root)
    checkpoints = [f for f in stored if f.startswith("train/encoder-mlm-") and "/checkpoint_" in f]
    assert any(f.endswith("/model.pt") for f in checkpoints), stored
    assert any(f.startswith("encoder/") and f.endswith(storage.CONTENT) for f in stored), stored
    assert is_published(out)


# tests/test_resume.py's run (its task, 6 epochs, a checkpoint every epoch), as a job whose workers need RESOURCE
# and whose run storage is the bucket; run from the job's working_dir (this tree, tests/ included)
RESUME_DRIVER = f"""
import sys
sys.path.insert(0, "tests")
from test_resume import _task
from cluster.ds_train import DistConfig, train
dist = DistConfig(num_workers=1, checkpoint_every=1, max_failures=2, log_every=1000,
                  worker_resources={{"{RESOURCE}": 1}})
train(_task(), sys.argv[1], sys.argv[2], dist)
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


def run_job(cluster, name: str, uri: str, wait: bool = True):
    """Submit RESUME_DRIVER for run `name` through `prefmine jobs submit`; the job id (waited for if `wait`)."""
    r = prefmine_cli("jobs", "submit", "--address", cluster.address, *(["--wait", "--timeout", "900"] if wait
                     else []), "--", "python", "-c", RESUME_DRIVER, name, uri, timeout=960)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout.split()[1]


def test_losing_the_worker_node_mid_training_resumes_on_a_replacement_from_the_object_store(two_nodes, bucket):
    """Kill the worker node's raylet after the first registered checkpoint, start a replacement node with the
    same resource: Ray Train restarts the worker group there from the checkpoint in the bucket and ends on the
    weights of an uninterrupted run."""
    import time

    import torch
    from ray.job_submission import JobSubmissionClient
    from test_resume import EPOCHS, registered_checkpoint

    uri = storage.join(bucket, "resume")
    run_job(two_nodes, "uninterrupted", uri)
    job = run_job(two_nodes, "node-lost", uri, wait=False)
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
    client = JobSubmissionClient(two_nodes.address)
    while str(client.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() - t_kill < 900, "the job did not end in 900 s after the kill"
        time.sleep(2)
    assert str(client.get_job_status(job)) == "SUCCEEDED", client.get_job_logs(job)[-4000:]

    trainers = actors_by_class(two_nodes.address, "RayTrainWorker")
    assert replacement.node_id in {a.node_id for a in trainers}, trainers  # the group restarted there
    a, clean_history = final_checkpoint(uri, "uninterrupted")
    b, history = final_checkpoint(uri, "node-lost")
    print(f"node lost: replacement joined {joined:.1f} s after the kill, first checkpoint after the kill "
          f"{recovered:.1f} s after it (the last epoch took {history[-1]['epoch_seconds']:.1f} s)")
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert history[-1]["restarts"] >= 1 and clean_history[-1]["restarts"] == 0
    for k in a:  # as tests/test_resume.py: the same data order and optimizer state after the restart
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert abs(history[-1]["loss"] - clean_history[-1]["loss"]) < 1e-4
