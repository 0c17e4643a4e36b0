"""The bundle store (prefmine/store.py): publish to a local path and to a URI filesystem with the manifest last,
a publish that dies half-way leaves no manifest (so serving refuses it), and fetch gives serving a local copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefmine import store


@pytest.fixture
def local_bundle(tmp_path):
    b = tmp_path / "built"
    (b / "ranker").mkdir(parents=True)
    (b / "policy" / "rl_module").mkdir(parents=True)
    np.save(b / "ranker" / "item_vectors.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    (b / "ranker" / "model.pt").write_bytes(bytes(range(256)) * 1000)
    (b / "policy" / "rl_module" / "state.pkl").write_bytes(b"\x00\x01" * 5000)
    (b / "manifest.json").write_text(json.dumps({"format": "prefmine-bundle/1", "version": "v-test-1"}))
    return b


def tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_publish_to_a_local_path_copies_everything_manifest_last(local_bundle, tmp_path):
    dst = tmp_path / "store" / "bundle"
    info = store.publish(local_bundle, dst)
    assert tree(dst) == tree(local_bundle) and info["files"] == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}
    assert mtimes["manifest.json"] == max(mtimes.values())
    assert store.fetch(dst) == dst.resolve()  # local: used in place


def test_a_publish_that_dies_half_way_leaves_no_manifest(local_bundle, tmp_path):
    dst = tmp_path / "bundle"
    store.publish(local_bundle, dst)  # an older complete version is there
    assert store.is_complete(dst)

    def die(rel):
        raise OSError(f"disk full after {rel}")

    with pytest.raises(OSError, match="disk full"):
        store.publish(local_bundle, dst, on_file=die)
    assert not store.is_complete(dst) and not (dst / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        store.fetch(dst)
    store.publish(local_bundle, dst)  # publishing again repairs it
    assert tree(dst) == tree(local_bundle)


def test_publish_to_a_uri_and_fetch_it_back(local_bundle, tmp_path):
    # Arrow's in-memory filesystem behind a URI (the same code path as s3:// or gs://, without a network)
    uri = "mock:///bucket/prefmine/bundles/v1"
    store.publish(local_bundle, uri)
    assert store.is_complete(uri) and store.read_manifest(uri)["version"] == "v-test-1"
    local = store.fetch(uri, store.StoreConfig(cache_dir=str(tmp_path / "cache")))
    assert tree(local) == tree(local_bundle)
    assert local.name.endswith("v-test-1")


def test_publish_refuses_an_unfinished_bundle(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished bundle"):
        store.publish(tmp_path / "half", tmp_path / "out")
