"""The bundle store (prefmine/store.py): publish to a local path and to a URI filesystem with the manifest last,
a publish that dies half-way leaves no manifest (so serving refuses it), and fetch gives serving a local copy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from prefmine import storage, store
from prefmine.integrity import IntegrityError, seal


@pytest.fixture
def local_bundle(tmp_path):
    b = tmp_path / "built"
    (b / "ranker").mkdir(parents=True)
    (b / "policy").mkdir(parents=True)
    np.save(b / "ranker" / "item_vectors.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    (b / "ranker" / "model.pt").write_bytes(bytes(range(256)) * 1000)
    (b / "policy" / "policy.safetensors").write_bytes(b"\x00\x01" * 5000)
    seal(b, {"format": "prefmine-bundle/2", "version": "v-test-1"})  # fetch verifies every file against this
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
    assert store.is_published(dst)

    def die(rel):
        raise OSError(f"disk full after {rel}")

    with pytest.raises(OSError, match="disk full"):
        store.publish(local_bundle, dst, on_file=die)
    assert not store.is_published(dst) and not (dst / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        store.fetch(dst)
    store.publish(local_bundle, dst)  # publishing again repairs it
    assert tree(dst) == tree(local_bundle)


def test_publish_to_a_uri_and_fetch_it_back(local_bundle, tmp_path):
    # Arrow's in-memory filesystem behind a URI (the same code path as s3:// or gs://, without a network)
    uri = "mock:///bucket/prefmine/bundles/v1"
    store.publish(local_bundle, uri)
    assert store.is_published(uri) and store.read_manifest(uri)["version"] == "v-test-1"
    local = store.fetch(uri, store.StoreConfig(cache_dir=str(tmp_path / "cache")))
    assert tree(local) == tree(local_bundle)
    assert local.name.endswith("v-test-1")


def test_a_nodes_cache_keeps_the_two_newest_versions_of_a_location(local_bundle, tmp_path):
    """Three versions published one after another at one URI and fetched each time (three rollouts): the cache
    keeps the newest two (the one a rollout replaces stays while its replicas drain), and another location's
    copy is left alone; fetching a kept version again makes it the newest, so it survives the next eviction."""
    cfg = store.StoreConfig(cache_dir=str(tmp_path / "cache"))
    uri = "mock:///bucket/prefmine/bundles/rolling"

    def release(version: str, location: str = uri):
        time.sleep(0.01)  # distinct fetch times
        seal(local_bundle, {"format": "prefmine-bundle/2", "version": version})
        store.publish(local_bundle, location)
        return store.fetch(location, cfg)

    other = release("v-other", "mock:///bucket/prefmine/bundles/other")
    copies = [release(f"v-{i}") for i in (1, 2, 3)]
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted([other.name, copies[1].name, copies[2].name]), cached
    assert store.fetch(copies[2], cfg) == copies[2]  # whole

    time.sleep(0.01)
    seal(local_bundle, {"format": "prefmine-bundle/2", "version": "v-2"})  # roll back: v-2 published again
    store.publish(local_bundle, uri)
    assert store.fetch(uri, cfg) == copies[1]  # from the cache, now the newest used
    release("v-4")
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert copies[1].name in cached and copies[2].name not in cached and other.name in cached, cached
    unbounded = store.StoreConfig(cache_dir=str(tmp_path / "cache"), keep_versions=0)
    seal(local_bundle, {"format": "prefmine-bundle/2", "version": "v-5"})
    store.publish(local_bundle, uri)
    store.fetch(uri, unbounded)
    assert len([p for p in (tmp_path / "cache").iterdir() if "rolling" in p.name]) == 3


def test_publish_refuses_an_unfinished_bundle(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished bundle"):
        store.publish(tmp_path / "half", tmp_path / "out")


def _uri_bundle(local_bundle, name):
    uri = f"mock:///bucket/prefmine/{name}"
    store.publish(local_bundle, uri)
    fs, root = store.resolve(uri)
    return uri, fs, root


def _rewrite(fs, path, data: bytes):
    with fs.open_output_stream(path) as f:
        f.write(data)


def _read(fs, path) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def test_fetch_refuses_a_file_changed_by_one_byte_and_names_it(local_bundle, tmp_path):
    uri, fs, root = _uri_bundle(local_bundle, "tampered")
    data = bytearray(_read(fs, f"{root}/ranker/model.pt"))
    data[1000] ^= 0x01
    _rewrite(fs, f"{root}/ranker/model.pt", bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match=r"ranker/model\.pt: sha256"):
        store.fetch(uri, store.StoreConfig(cache_dir=str(cache)))
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-verified is left in the cache
    # a local location is verified in place too
    (local_bundle / "ranker" / "model.pt").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"ranker/model\.pt"):
        store.fetch(local_bundle)


def test_fetch_takes_only_listed_files_and_refuses_unlisted_ones_locally(local_bundle, tmp_path):
    uri, fs, root = _uri_bundle(local_bundle, "extra")
    _rewrite(fs, f"{root}/policy/extra.pkl", b"not listed")
    local = store.fetch(uri, store.StoreConfig(cache_dir=str(tmp_path / "cache")))
    assert not (local / "policy" / "extra.pkl").exists() and (local / "policy" / "policy.safetensors").is_file()
    (local_bundle / "policy" / "extra.pkl").write_bytes(b"added after sealing")
    with pytest.raises(IntegrityError, match=r"policy/extra\.pkl is not listed"):
        store.fetch(local_bundle)


@pytest.mark.parametrize("version", ["x/../../../etc/cron.d/evil", "/etc/cron.d/evil", "..", "a/b", "v1\n"])
def test_fetch_refuses_a_version_that_is_not_a_plain_name(local_bundle, tmp_path, version):
    uri, fs, root = _uri_bundle(local_bundle, "badversion")
    manifest = json.loads(_read(fs, f"{root}/manifest.json"))
    manifest["version"] = version
    _rewrite(fs, f"{root}/manifest.json", json.dumps(manifest).encode())
    cache = tmp_path / "deep" / "cache"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(IntegrityError, match="'version'"):
        store.fetch(uri, store.StoreConfig(cache_dir=str(cache)))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created or deleted


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "ranker/../../x", "a\\b", "ranker//model.pt"])
def test_fetch_refuses_file_names_that_leave_the_bundle(local_bundle, tmp_path, name):
    uri, fs, root = _uri_bundle(local_bundle, "badname")
    manifest = json.loads(_read(fs, f"{root}/manifest.json"))
    manifest["files"][name] = manifest["files"]["ranker/model.pt"]
    _rewrite(fs, f"{root}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="not a relative path inside the bundle"):
        store.fetch(uri, store.StoreConfig(cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "outside.bin").exists() and not (tmp_path / "cache").exists()


def test_cache_path_is_one_plain_folder_inside_the_cache(tmp_path):
    cfg = store.StoreConfig(cache_dir=str(tmp_path / "c"))
    p = store.cache_path("s3://bucket/../../x/..", "v1", cfg)
    assert p.parent == (tmp_path / "c").resolve() and p.name.endswith("-v1") and ".." not in p.name
    assert store.cache_path("s3://b/x", "v1", cfg) != store.cache_path("s3://b_x", "v1", cfg)


# Each process fetching from the S3 server reads its credentials from its own environment (tests/test_storage.py)
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
_FETCHER = """
import sys, time
from pathlib import Path
from prefmine import storage, store
uri, cache, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
print(store.fetch(uri, store.StoreConfig(cache_dir=cache, chunk_bytes=64 << 10)))
"""


def test_two_processes_fetching_one_version_into_one_cache_both_get_a_whole_copy(local_bundle, tmp_path,
                                                                               monkeypatch):
    """Two Serve replicas of one node fetch the same version at the same moment (released together, a bundle of
    several MB read in 64 KiB chunks so the downloads overlap): each downloads into a folder of its own, one
    copy is renamed into place, and both get it, verified, with nothing left behind."""
    import subprocess
    import sys
    import time

    from live_server import s3_bucket

    for k, v in _CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    (local_bundle / "ranker" / "model.pt").write_bytes(np.random.default_rng(0).bytes(2 << 20))
    seal(local_bundle, {"format": "prefmine-bundle/2", "version": "v-test-1"})
    with s3_bucket("prefmine-fetch", "bundles") as bucket:
        uri = storage.join(bucket, "v1")
        store.publish(local_bundle, uri)
        cache, go = tmp_path / "cache", tmp_path / "go"
        ready = [tmp_path / f"ready-{i}" for i in range(2)]
        procs = [subprocess.Popen([sys.executable, "-c", _FETCHER, uri, str(cache), str(r), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1, outs
    local = paths.pop()
    assert tree(Path(local)) == tree(local_bundle)
    assert [p.name for p in cache.iterdir()] == [Path(local).name]  # no download folder left behind


def test_a_replica_refuses_a_version_its_location_no_longer_holds(local_bundle, tmp_path, monkeypatch):
    """serve.served.check_bundle_files, what every replica runs before it loads a version: a URI is fetched into
    the node's cache ($PREFMINE_BUNDLE_CACHE); once another version is published there, a replica asked for the
    old one refuses it instead of serving what the location holds now."""
    from serve.served import BundleRef, StaleBundle, check_bundle_files

    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "node-cache"))
    uri, _fs, _root = _uri_bundle(local_bundle, "moving")
    local = check_bundle_files(BundleRef(uri, "v-test-1"))
    assert Path(local).parent == (tmp_path / "node-cache").resolve() and tree(Path(local)) == tree(local_bundle)
    seal(local_bundle, {"format": "prefmine-bundle/2", "version": "v-test-2"})
    store.publish(local_bundle, uri)
    with pytest.raises(StaleBundle, match="'v-test-2', not 'v-test-1'.*moved on"):
        check_bundle_files(BundleRef(uri, "v-test-1"))
    assert Path(check_bundle_files(BundleRef(uri, "v-test-2"))).name.endswith("v-test-2")


def test_the_driver_checks_a_location_without_downloading_it(local_bundle, tmp_path, monkeypatch, capsys):
    """`prefmine serve --bundle URI` checks the bundle there before Ray starts (serve.app.check_location, with
    store.check_published): the manifest and a listing; a bundle lacking required parts, a file missing or of
    another size is refused, and nothing is written to the cache."""
    from serve.run import run_serve

    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    uri, fs, root = _uri_bundle(local_bundle, "checked")
    assert run_serve(uri, grpc_port=1) == 2  # this bundle has a ranker and a policy only
    assert "lacks catalog, encoder" in capsys.readouterr().err
    assert store.check_published(uri)["version"] == "v-test-1"
    _rewrite(fs, f"{root}/ranker/model.pt", b"short")
    with pytest.raises(IntegrityError, match=r"ranker/model\.pt has 5 bytes"):
        store.check_published(uri)
    fs.delete_file(f"{root}/policy/policy.safetensors")
    with pytest.raises(FileNotFoundError, match=r"policy/policy\.safetensors is listed in the manifest but missing"):
        store.check_published(uri)
    assert not (tmp_path / "cache").exists()
