"""prefmine.storage: one location for every artefact, on a local disk and on a real S3-compatible server.

The object store is moto's S3 server (`moto[server]`, the dev extra), started here on 127.0.0.1 and reached
through pyarrow's own S3 client, as a training node would reach AWS or any S3-compatible store.
"""

from __future__ import annotations

import json
import os

import pytest
from live_server import s3_bucket

from prefmine import storage
from prefmine.storage import CONTENT, StorageConfig, get_dir, join, put_dir, read_index, resolve

# Every process that touches the store reads its credentials from its own environment, as a cluster node does
# (instance role, or variables given to `ray start`). Ray's workers inherit the environment Ray was started with,
# and the session's Ray may start before this module's fixtures run, but never before collection: so the (fake)
# credentials moto accepts are set here, at import, when absent.
for _k, _v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(_k, _v)


def _tree(root):
    (root / "ckpt" / "epoch_1").mkdir(parents=True)
    (root / "ckpt" / "epoch_1" / "model.pt").write_bytes(bytes(range(256)) * 50)
    (root / "embeddings.npy").write_bytes(b"\x93NUMPY" + b"\x00" * 1000)
    (root / "report.json").write_text(json.dumps({"ndcg": 0.5}))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _read(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != CONTENT}


@pytest.fixture(scope="module")
def s3_uri():
    """A fresh bucket on an S3 server on loopback; yields a URI prefix with the endpoint options."""
    with s3_bucket("prefmine-test", "runs") as uri:
        yield uri


def test_join_keeps_uri_options_last():
    assert join("s3://b/runs?endpoint_override=h:1&scheme=http", "r1", "ckpt") == \
        "s3://b/runs/r1/ckpt?endpoint_override=h:1&scheme=http"
    assert join("/tmp/x", "r1") == "/tmp/x/r1"


def test_local_round_trip_in_place_and_incomplete_refused(tmp_path):
    want = _tree(tmp_path / "src")
    dst = tmp_path / "store" / "run1"
    with pytest.raises(FileNotFoundError, match=CONTENT):
        get_dir(dst)
    index = put_dir(tmp_path / "src", dst)
    assert sorted(index["files"]) == sorted(want)
    assert get_dir(dst) == dst.resolve()  # a local location is used where it is, not copied
    assert _read(dst) == want
    (dst / CONTENT).unlink()  # as a put_dir that died before its last write leaves it
    with pytest.raises(FileNotFoundError):
        get_dir(dst)


def test_object_store_download_once_per_content_and_checked(tmp_path, s3_uri):
    want = _tree(tmp_path / "src")
    uri = join(s3_uri, "run1")
    put_dir(tmp_path / "src", uri)
    fs, root = resolve(uri)
    assert set(storage.list_files(fs, root)) == set(want) | {CONTENT}
    cfg = StorageConfig(cache_dir=str(tmp_path / "cache"))
    local = get_dir(uri, cfg)
    assert local.parent == (tmp_path / "cache").resolve() and local.name == read_index(uri)["digest"]
    assert _read(local) == want
    # the same content again: served from the node's cache (the remote data file is gone, the index is not)
    fs.delete_file(f"{root}/report.json")
    assert get_dir(uri, cfg) == local
    # a file changed behind the index is refused on download, and nothing lands in the cache
    with fs.open_output_stream(f"{root}/report.json") as f:
        f.write(b'{"ndcg": 0.9}')
    fresh = StorageConfig(cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match="report.json"):
        get_dir(uri, fresh)
    assert [p.name for p in (tmp_path / "cache2").iterdir()] == []


def test_a_dataset_prepared_into_the_object_store_loads_from_it(tmp_path, s3_uri, raw_dir):
    """`prepare --out URI` uploads the dataset with its content index, and `load_dataset(URI)` (what `--data URI`
    gives every training job) reads it back on a node that shares no disk with the one that prepared it: the same
    files, hash and histories as a local preparation of the same raw files."""
    import numpy as np

    from prefmine.data.dataset import load_dataset
    from prefmine.data.prepare import prepare

    raw = tmp_path / "raw" / "amazon2018"
    (raw / "Magazine_Subscriptions").mkdir(parents=True)
    for name in ("Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz"):
        os.symlink(raw_dir / "amazon2018" / "Magazine_Subscriptions" / name, raw / "Magazine_Subscriptions" / name)
    uri = join(s3_uri, "datasets", "magazine5")
    remote = prepare("amazon2018", raw, uri, "Magazine_Subscriptions")
    local = prepare("amazon2018", raw, tmp_path / "local", "Magazine_Subscriptions")
    assert remote["data_hash"] == local["data_hash"]
    assert set(read_index(uri)["files"]) == set(_read(tmp_path / "local"))
    a, b = load_dataset(uri), load_dataset(tmp_path / "local")
    assert a.path != b.path and a.manifest["data_hash"] == b.manifest["data_hash"]
    assert np.array_equal(a.item_ids, b.item_ids) and len(a.train_seqs) == len(b.train_seqs) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a.train_seqs, b.train_seqs))
    assert np.array_equal(a.test_item, b.test_item)


def test_index_naming_a_path_outside_is_refused(tmp_path, s3_uri):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    uri = join(s3_uri, "evil")
    put_dir(src, uri)
    fs, root = resolve(uri)
    files = {"../../escape.txt": {"sha256": "0" * 64, "bytes": 1}}
    with fs.open_output_stream(f"{root}/{CONTENT}") as f:
        f.write(json.dumps({"digest": storage._digest(files), "files": files}).encode())
    with pytest.raises(ValueError, match="leaves the download folder"):
        get_dir(uri, StorageConfig(cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow
def test_ray_train_keeps_run_and_checkpoints_in_the_object_store(s3_uri, ray_session):
    """cluster.ds_train with a URI: checkpoints land in the store, the final one comes back to a local folder,
    and the same run name started again restores from the store and trains no further."""
    import numpy as np
    import torch

    from cluster.ds_train import DistConfig, train
    from prefmine.text.encoder import EncoderConfig, bert_config
    from prefmine.text.tasks import RatingTask

    cfg = EncoderConfig(hidden=32, layers=1, heads=2, intermediate=64, finetune_epochs=1, batch_size=16, seed=3)
    ids = np.random.default_rng(3).integers(5, 100, size=(64, 12))
    task = RatingTask(cfg, bert_config(cfg, 100), None, ids, np.ones_like(ids), (ids[:, 0] % 5 + 1).astype(np.float32))
    uri = join(s3_uri, "train")
    dist = DistConfig(num_workers=1, checkpoint_every=1, log_every=1000)
    first = train(task, "store-run", uri, dist)
    fs, root = resolve(uri)
    stored = storage.list_files(fs, f"{root}/store-run")
    assert any(f.endswith("/model.pt") and f.startswith("checkpoint_") for f in stored), stored
    assert first.state_dict_path.is_file()
    again = train(task, "store-run", uri, dist)
    assert len(again.history) == len(first.history) == 1
    a = torch.load(first.state_dict_path, map_location="cpu", weights_only=True)
    b = torch.load(again.state_dict_path, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_embedding_actors_load_the_encoder_from_the_store(s3_uri, ray_session, tmp_path, tiny_bert_dir):
    """cluster.embed_job with the encoder given as a URI: the driver's copy is deleted before the job runs, so
    the actors can only have it from the object store."""
    import shutil

    import numpy as np

    from cluster.embed_job import EmbedConfig, embed_on_ray
    from prefmine.text.encoder import embed_texts
    from prefmine.text.runtime import load_encoder

    texts = ["red wool scarf", "a blue mug", "", "garden hose with a brass nozzle"] * 5
    d = tiny_bert_dir(tmp_path / "ckpt", texts)
    tokenizer, bert = load_encoder(d)
    expected = embed_texts(bert, tokenizer, texts, 48)
    uri = join(s3_uri, "encoder")
    put_dir(d, uri)
    shutil.rmtree(d)
    out = embed_on_ray(uri, texts, tmp_path / "emb.npy", 48, EmbedConfig(batch_size=8, rows_per_block=10))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
