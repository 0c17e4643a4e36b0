"""RuntimeCache: a replica's runtimes by bundle version (serve/served.py), without Ray.

The loads here are plain functions over real manifest files; what is checked is the cache's own contract: one
load per version even under concurrent first requests, a failed load leaves nothing behind and is retried, the
oldest version is released beyond ``keep``, and a directory rewritten in place is refused."""

import asyncio
import json
import threading
import time

import pytest

from prefmine.integrity import seal
from serve.served import BundleRef, RuntimeCache, StaleBundle


def _version_dir(root, version):
    d = root / version
    d.mkdir()
    (d / "weights.bin").write_bytes(version.encode())
    seal(d, {"version": version})  # replicas verify a version's files before loading it
    return BundleRef(str(d), version)


class _Loads:
    """Counts loads per path; fails the first `fail_first` of them; each load takes `delay` s (in its thread)."""

    def __init__(self, fail_first=0, delay=0.0):
        self.calls, self.fail_first, self.delay = [], fail_first, delay
        self._lock = threading.Lock()

    def __call__(self, path):
        with self._lock:
            self.calls.append(path)
            n = len(self.calls)
        time.sleep(self.delay)
        if n <= self.fail_first:
            raise OSError(f"broken weights in {path}")
        return {"path": path}


def test_concurrent_first_requests_share_one_load(tmp_path):
    ref = _version_dir(tmp_path, "v1")
    loads = _Loads(delay=0.2)
    cache = RuntimeCache(loads)

    async def many():
        return await asyncio.gather(*(cache.get(ref) for _ in range(8)))

    got = asyncio.run(many())
    assert loads.calls == [ref.path]
    assert all(g is got[0] for g in got)
    assert cache.versions() == ["v1"]


def test_a_failed_load_leaves_no_lock_and_is_retried(tmp_path):
    ref = _version_dir(tmp_path, "v1")
    loads = _Loads(fail_first=1)
    cache = RuntimeCache(loads)

    async def twice():
        with pytest.raises(OSError, match="broken weights"):
            await cache.get(ref)
        assert cache.versions() == [] and cache._loading == {}
        return await cache.get(ref)

    assert asyncio.run(twice()) == {"path": ref.path}
    assert loads.calls == [ref.path, ref.path]
    assert cache._loading == {}


def test_versions_beyond_keep_are_released_oldest_first(tmp_path):
    refs = [_version_dir(tmp_path, f"v{i}") for i in range(3)]
    cache = RuntimeCache(_Loads(), keep=2)

    async def roll():
        held = await cache.get(refs[0])
        await cache.get(refs[1])
        await cache.get(refs[0])  # used again: now the newest
        await cache.get(refs[2])
        return held

    held = asyncio.run(roll())
    assert cache.versions() == ["v0", "v2"]
    assert held == {"path": refs[0].path}


def test_versions_an_arm_pins_are_held_through_rollouts(tmp_path):
    """adopt() with a user_config whose `pinned` names an A/B arm's version: loaded with the served one and held
    while three more versions roll through a keep-2 cache; unpinned by a later config, it is an ordinary version
    again: with one more the cache keeps the two used last."""
    from serve.served import adopt

    control, *rolled = [_version_dir(tmp_path, f"v{i}") for i in range(4)]
    loads = _Loads()
    cache = RuntimeCache(loads, keep=2)

    async def roll():
        pins = [control.config()]
        for ref in rolled:
            await adopt({**ref.config(), "pinned": pins}, cache)
            assert "v0" in cache.versions()
        await adopt({**rolled[-1].config(), "pinned": []}, cache)
        assert cache.versions() == ["v0", "v3"] and cache.pinned == frozenset()  # v0 was used after v2
        await adopt(rolled[1].config(), cache)

    asyncio.run(roll())
    assert cache.versions() == ["v3", "v2"]
    assert loads.calls.count(control.path) == 1  # loaded once, never again while pinned


def test_a_directory_rewritten_in_place_is_refused(tmp_path):
    ref = _version_dir(tmp_path, "v1")
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({"version": "v2"}))
    loads = _Loads()
    with pytest.raises(StaleBundle, match="own directory"):
        asyncio.run(RuntimeCache(loads).get(ref))
    assert loads.calls == []
