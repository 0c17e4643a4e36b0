"""A torch extension build lock left by a killed build is removed before DeepSpeed starts (it would hang every
later start); a lock of a build running now is kept."""

from __future__ import annotations

import os
import time

from prefmine.jit_locks import clear_stale_locks, extensions_dir


def test_only_stale_locks_are_removed(tmp_path, monkeypatch):
    old = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "cpu_adam" / "lock"
    flat = tmp_path / "fused_op" / "lock"
    for lock in (old, fresh, flat):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    (old.parent / "deepspeed_shm_comm.so").write_bytes(b"\0")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(flat, (hour_ago, hour_ago))
    assert sorted(clear_stale_locks(tmp_path)) == sorted([old, flat])
    assert not old.exists() and not flat.exists() and fresh.exists()
    assert (old.parent / "deepspeed_shm_comm.so").exists()  # only the lock goes
    assert clear_stale_locks(tmp_path) == []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == tmp_path
    assert clear_stale_locks(stale_after_s=0.0) == [fresh]
