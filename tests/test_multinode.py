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

import pytest
from live_server import prefmine_cli, ray_cluster

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
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (dev extra) not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"?endpoint_override={host}:{port}&scheme=http"
    fs, _ = storage.resolve(f"s3://prefmine-multinode{options}&allow_bucket_creation=true")
    fs.create_dir("prefmine-multinode")
    yield f"s3://prefmine-multinode/prefmine{options}"
    server.stop()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, bucket):
    """A head (2 CPUs: room for the training workers, were they not told to go elsewhere) and one worker node
    (2 CPUs, `worker_node: 2`)."""
    with ray_cluster(tmp_path_factory.mktemp("cluster"), head_cpus=2, workers=((2, {RESOURCE: 2}),),
                     env=CREDENTIALS) as cluster:
        yield cluster


def actors_by_class(address: str, part: str) -> list:
    """Every actor (alive or dead) of the cluster whose class name contains `part` (Ray's state API)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=address, limit=10_000, raise_on_missing_output=False)
            if part in a.class_name]


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

    fs, root = storage.resolve(run_storage)
    stored = storage.list_files(fs, root)
    checkpoints = [f for f in stored if f.startswith("train/encoder-mlm-") and "/checkpoint_" in f]
    assert any(f.endswith("/model.pt") for f in checkpoints), stored
    assert any(f.startswith("encoder/") and f.endswith(storage.CONTENT) for f in stored), stored
    assert is_published(out)
