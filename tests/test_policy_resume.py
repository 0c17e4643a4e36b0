"""Kill the policy-training driver (`python -m cluster.train_policy`, its own local Ray) with SIGKILL after its
second checkpoint, run the same command again as if on another machine (checkpoints in an S3 bucket, the killed
driver's local copies deleted): it resumes from the last complete checkpoint in the store and ends with one
history row per iteration, continuing env-step counters and a loadable policy. Plus the fast checks that an
unfinished checkpoint is ignored and another run's checkpoint is refused (both before Ray is started).

The simulator is built from synthetic logs (300 users, 120 items, 8-d ranker vectors) in about a second, so the
test's time goes to RLlib itself.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from prefmine.policy.simulator import ObsSpec, SimulatorInputs, build_simulator_inputs
from prefmine.train_config import PRESETS

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 6
STEPS = 200  # env steps per iteration
SETTINGS = [f"max_iterations={ITERATIONS}", f"steps_per_iteration={STEPS}", "checkpoint_every=1",
            "learning_starts=100", "epsilon_timesteps=1000", "target_update_freq=200", "time_budget_s=900"]


def synthetic_inputs(seed: int = 0, n_users: int = 300, n_items: int = 120, dim: int = 8) -> SimulatorInputs:
    """Users who mostly read within one of six item clusters; states = mean of their items' vectors."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    cluster = rng.integers(0, 6, n_items)
    seqs, nxt = [], []
    for _ in range(n_users):
        pool = np.flatnonzero(cluster == rng.integers(0, 6))
        n = int(rng.integers(3, 9))
        items = np.where(rng.random(n) < 0.7, rng.choice(pool, n), rng.integers(0, n_items, n))
        seqs.append(items[:-1].astype(np.int64))
        nxt.append(int(items[-1]))
    states = np.stack([vectors[s].mean(0) for s in seqs])
    return build_simulator_inputs(seqs, np.asarray(nxt), n_items, states, vectors, seed=seed)


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, never one this test process might know of
    return env


def _session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


# ---- fast: what counts as a checkpoint, and which ones are refused ----------------------------------------

def _fake_checkpoint(ckpt_dir: Path, iteration: int, state: dict | None) -> Path:
    """An iter_NNNNNN folder with (or, state None, without) the completed state JSON train_policy writes last."""
    from prefmine.policy.checkpoint import CHECKPOINT_STATE

    d = ckpt_dir / f"iter_{iteration:06d}"
    d.mkdir(parents=True)
    (d / "algorithm_state.pkl").write_bytes(b"")
    if state is not None:
        (d / CHECKPOINT_STATE).write_text(json.dumps({**state, "iteration": iteration, "elapsed_s": 1.0,
                                                      "history": [], "complete": True}))
    return d


def test_unfinished_checkpoints_are_ignored_and_other_runs_refused(tmp_path):
    from cluster.train_policy import (
        CheckpointMismatch,
        checkpoint_identity,
        find_checkpoint,
        train_policy,
    )
    from prefmine.config import apply

    inputs, sim = synthetic_inputs(), PRESETS["tiny"].simulator
    dqn = apply(PRESETS["tiny"].policy, {"max_iterations": 2})
    ident = checkpoint_identity(inputs, sim, dqn, ObsSpec.from_inputs(inputs, sim))
    ckpt = tmp_path / "ckpt"
    assert find_checkpoint(ckpt) is None  # no folder yet
    good = _fake_checkpoint(ckpt, 2, ident)
    _fake_checkpoint(ckpt, 5, None)  # renamed into place but never completed: no state JSON
    (ckpt / "iter_000007").mkdir()
    (ckpt / "iter_000008").mkdir()
    (ckpt / "iter_000008" / "prefmine_checkpoint.json").write_text('{"iteration": 8, "comp')  # cut mid-write
    (ckpt / ".iter_000009.x1.tmp").mkdir()  # the temp folder of a driver killed during save_to_path
    assert find_checkpoint(ckpt) == good

    import ray

    ray_was_up = ray.is_initialized()
    ppo = apply(PRESETS["tiny"].policy, {"algorithm": "PPO", "max_iterations": 2})
    with pytest.raises(CheckpointMismatch, match=r"algorithm: checkpoint 'DQN', this run 'PPO'"):
        train_policy(inputs, tmp_path / "out", ppo, sim, checkpoint_dir=ckpt)
    wider = PRESETS["base"].simulator  # 20 candidates: another observation size
    with pytest.raises(CheckpointMismatch, match=r"obs_size: checkpoint 39, this run 69.*simulator\.n_candidates"):
        train_policy(inputs, tmp_path / "out", dqn, wider, checkpoint_dir=ckpt)
    with pytest.raises(CheckpointMismatch, match=r"inputs_sha1"):  # same shapes, other data
        train_policy(synthetic_inputs(seed=1), tmp_path / "out", dqn, sim, checkpoint_dir=ckpt)
    assert ray.is_initialized() == ray_was_up  # refused before any Ray was started
    assert not (tmp_path / "out").exists()


# ---- slow: SIGKILL the driver, restart the same command -----------------------------------------------------

@pytest.mark.slow
def test_killed_policy_driver_resumes_from_its_last_checkpoint(tmp_path):
    from live_server import s3_bucket

    with s3_bucket("policy-resume", "checkpoints") as uri:
        _killed_driver_resumes(tmp_path, uri)


def _killed_driver_resumes(tmp_path, ckpt: str):
    import shutil

    from cluster.train_policy import CheckpointMismatch, train_policy
    from prefmine.policy.checkpoint import _stored_iterations, local_checkpoint_dir
    from prefmine.policy.runtime import PolicyRuntime

    inputs = synthetic_inputs()
    pkl = tmp_path / "inputs.pkl"
    pkl.write_bytes(pickle.dumps(inputs))
    out, metrics_json = tmp_path / "policy", tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "cluster.train_policy", "--inputs", str(pkl), "--out", str(out),
           "--set", *SETTINGS, "--eval-sessions", "50", "--json", str(metrics_json), "--checkpoint-dir", ckpt]

    log1 = tmp_path / "run1.log"
    t_start = time.time()
    with open(log1, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    sid = os.getsid(proc.pid)
    try:
        deadline = time.time() + 240
        while True:
            stored = _stored_iterations(ckpt)  # complete checkpoints in the bucket
            if stored and stored[-1] >= 2:
                break
            assert proc.poll() is None, f"driver exited ({proc.returncode}) before checkpoint 2:\n{log1.read_text()}"
            assert time.time() < deadline, f"no checkpoint 2 in 240 s:\n{log1.read_text()}"
            time.sleep(0.2)
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert ray_procs, "the driver started no Ray processes?"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    t_killed = time.time()
    assert _stored_iterations(ckpt)[-1] < ITERATIONS, "the first run was not interrupted"
    # nothing of the killed driver's Ray survives: neither its process tree nor anything left in its session
    gone, alive = psutil.wait_procs(ray_procs, timeout=20)
    assert not alive, f"Ray processes outlived the killed driver: {[p.pid for p in alive]}"
    deadline = time.time() + 20
    while _session_processes(sid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _session_processes(sid), [p.cmdline() for p in _session_processes(sid)]

    shutil.rmtree(local_checkpoint_dir(ckpt))  # the restart is on another machine: only the store has them
    log2 = tmp_path / "run2.log"
    with open(log2, "wb") as f:
        rerun = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=300,
                               start_new_session=True)
    text = log2.read_text()
    assert rerun.returncode == 0, text
    m = re.search(r"\[policy DQN\] resumed from iteration (\d+) \(checkpoint (\S+);.*replay buffer (\d+) steps",
                  text)
    assert m, text
    resumed, buffer_steps = int(m.group(1)), int(m.group(3))
    assert resumed >= 2 and Path(m.group(2)).name == f"iter_{resumed:06d}"
    assert buffer_steps >= resumed * STEPS  # the DQN replay buffer came back (capacity 50k: nothing evicted)

    train = json.loads(metrics_json.read_text())["train"]
    hist = train["history"]
    assert [r["iteration"] for r in hist] == list(range(1, ITERATIONS + 1))
    assert train["resumed_from"] == resumed and train["iterations"] == ITERATIONS
    steps = [r["env_steps"] for r in hist]
    # lifetime env steps continue across the restart (RLlib's counters were restored, not restarted at 0)
    assert all(STEPS <= b - a < 2 * STEPS for a, b in zip(steps, steps[1:])), steps
    assert steps[resumed] > steps[resumed - 1] >= resumed * STEPS
    seconds = [r["seconds"] for r in hist]
    assert seconds == sorted(seconds)  # the budget's clock continues too
    print(f"\nresumed from {resumed}: env steps {steps}, buffer {buffer_steps}, seconds {seconds}, "
          f"kill after {t_killed - t_start:.0f}s, rerun {time.time() - t_killed:.0f}s")

    rt = PolicyRuntime(out)
    assert rt.config["metrics"]["resumed_from"] == resumed
    obs = np.random.default_rng(0).normal(size=(4, ObsSpec.from_inputs(inputs, PRESETS["tiny"].simulator).size))
    assert np.isfinite(rt.q_values(obs.astype(np.float32))).all()

    assert _stored_iterations(ckpt) == [ITERATIONS - 1, ITERATIONS]  # the last two, in the store
    kept = sorted(p.name for p in local_checkpoint_dir(ckpt).iterdir())
    assert kept == [f"iter_{ITERATIONS - 1:06d}", f"iter_{ITERATIONS:06d}"], kept  # last two, no temp folders
    # the real checkpoint is refused by a run of another algorithm (before any Ray is started)
    from prefmine.config import apply

    with pytest.raises(CheckpointMismatch, match="algorithm"):
        train_policy(inputs, tmp_path / "ppo", apply(PRESETS["tiny"].policy, {"algorithm": "PPO"}),
                     checkpoint_dir=ckpt)
