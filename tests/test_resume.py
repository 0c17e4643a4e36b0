"""Kill a Ray Train worker mid-run: FailureConfig restarts the worker group from the last checkpoint (DeepSpeed
shards + optimizer state) and the run ends where an uninterrupted run ends.

The kill waits until Ray Train's controller has *registered* a checkpoint (its checkpoint-manager snapshot in the
run directory names a latest checkpoint): a checkpoint directory appears in storage before it is registered, and a
worker killed in between restarts the run from scratch, as it should."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import torch

from cluster.ds_train import DistConfig, train
from prefmine.text.encoder import EncoderConfig, bert_config
from prefmine.text.tasks import RatingTask

EPOCHS = 6


def _task(epochs: int = EPOCHS) -> RatingTask:
    cfg = EncoderConfig(finetune_epochs=epochs, batch_size=16, finetune_lr=1e-3, seed=11)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 200, size=(1024, 24))
    ratings = (ids[:, 0] % 5 + 1).astype(np.float32)
    return RatingTask(cfg, bert_config(cfg, 200), None, ids, np.ones_like(ids), ratings)


def _workers() -> list[psutil.Process]:
    """Ray Train workers of this test session's own Ray (descendants of this process), never another Ray's."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if any("RayTrainWorker" in c for c in p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def registered_checkpoint(snapshot) -> bool:
    """Whether Ray Train's controller has registered a checkpoint of the run (written after registration)."""
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_and_matches_an_uninterrupted_run(ray_session, tmp_path, capfd):
    dist = DistConfig(checkpoint_every=1, max_failures=2, log_every=1000)
    clean = train(_task(), "resume-clean", tmp_path, dist)
    shown = capfd.readouterr().err  # the driver's console: one progress line per epoch, in order
    lines = [f"[resume-clean] epoch: {e}/{EPOCHS} epochs" for e in range(1, EPOCHS + 1)]
    at = [shown.find(line) for line in lines]
    assert all(i >= 0 for i in at) and at == sorted(at), shown[-2000:]

    killed: list[int] = []

    def kill_after_first_checkpoint():
        snapshot = tmp_path / "resume-killed" / "checkpoint_manager_snapshot.json"
        deadline = time.time() + 600
        while time.time() < deadline:
            if registered_checkpoint(snapshot):
                workers = _workers()
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
                    return
            time.sleep(0.1)

    t = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    t.start()
    resumed = train(_task(), "resume-killed", tmp_path, dist)
    t.join(timeout=5)

    assert killed, "no worker was killed (no registered checkpoint seen in time)"
    assert len(resumed.history) == EPOCHS and [h["epoch"] for h in resumed.history] == list(range(EPOCHS))
    assert resumed.history[-1]["restarts"] >= 1 and clean.history[-1]["restarts"] == 0
    a = torch.load(clean.state_dict_path, weights_only=True)
    b = torch.load(resumed.state_dict_path, weights_only=True)
    for k in a:  # same data order, same optimizer state after the restart: the same end point
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert abs(resumed.history[-1]["loss"] - clean.history[-1]["loss"]) < 1e-4
