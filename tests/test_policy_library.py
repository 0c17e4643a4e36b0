"""The policy's library pieces (prefmine/policy/config.py, checkpoint.py, evaluation.py): importable and usable
without Ray, settings refused naming the field, the evaluation statistics by hand, checkpoint identity checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from prefmine.config import ConfigError, apply
from prefmine.policy.checkpoint import (
    CHECKPOINT_STATE,
    CheckpointMismatch,
    check_resumable,
    checkpoint_identity,
    find_checkpoint,
    inputs_fingerprint,
)
from prefmine.policy.config import PolicyTrainConfig
from prefmine.policy.evaluation import evaluate_policies, format_evaluation, summarise_sessions
from prefmine.policy.simulator import ObsSpec, SimulatorConfig, build_simulator_inputs
from prefmine.train_config import PRESETS


def small_inputs(seed: int = 0, n_items: int = 40, users: int = 60, dim: int = 8):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=rng.integers(2, 8)) for _ in range(users)]
    return build_simulator_inputs(seqs, rng.integers(0, n_items, size=users), n_items,
                                  rng.normal(size=(users, dim)).astype(np.float32),
                                  rng.normal(size=(n_items, dim)).astype(np.float32), seed=seed)


def test_the_library_modules_import_no_ray():
    code = ("import sys, prefmine.policy.config, prefmine.policy.checkpoint, prefmine.policy.evaluation, "
            "prefmine.policy.inputs, prefmine.text.corpus, prefmine.ranker.blend, prefmine.ranker.retrieval, "
            "prefmine.bundle; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_policy_settings_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="'algorithm': 'A2C'"):
        PolicyTrainConfig(algorithm="A2C")
    with pytest.raises(ConfigError, match="'checkpoint_every'"):
        apply(PRESETS["tiny"].policy, {"checkpoint_every": -1})
    for name, tree in PRESETS.items():  # every preset's policy names the preset it was made for
        assert tree.policy.simulator == name, name


def test_session_statistics_by_hand():
    runs = {"return": np.array([1.0, 3.0, 2.0, 2.0]), "shows": np.array([2.0, 4.0, 2.0, 2.0]),
            "clicks": np.array([1.0, 2.0, 1.0, 0.0]), "purchases": np.array([0.0, 1.0, 1.0, 0.0])}
    s = summarise_sessions(runs)
    assert s["return_mean"] == pytest.approx(2.0)
    assert s["ci95"] == pytest.approx(1.96 * np.std([1, 3, 2, 2], ddof=1) / 2)
    assert s["ctr"] == pytest.approx(4 / 10) and s["conversion"] == pytest.approx(2 / 10)
    # delta method with sessions as units: residuals (clicks - r * shows) / mean(shows)
    resid = (runs["clicks"] - 0.4 * runs["shows"]) / 2.5
    assert s["ctr_ci95"] == pytest.approx(1.96 * resid.std(ddof=1) / 2)
    assert s["purchases_per_click"] == pytest.approx(0.5) and s["session_len_mean"] == pytest.approx(2.5)
    assert s["sessions"] == 4


def test_baselines_are_evaluated_on_common_sessions_and_tabulated():
    inputs = small_inputs()
    ev = evaluate_policies(inputs, None, n_sessions=120, seed=3, sim_cfg=SimulatorConfig(n_candidates=10))
    assert set(ev) == {"greedy", "popularity", "random"}
    assert ev["greedy"]["vs_greedy"] == {"diff_mean": 0.0, "ci95": 0.0}
    assert all(r["sessions"] == 120 for r in ev.values())
    table = format_evaluation(ev).splitlines()
    assert len(table) == 2 + 3 and table[2].startswith("| greedy | ")


def test_checkpoint_identity_names_every_difference(tmp_path):
    inputs, sim = small_inputs(), PRESETS["tiny"].simulator
    cfg = PRESETS["tiny"].policy
    ident = checkpoint_identity(inputs, sim, cfg, ObsSpec.from_inputs(inputs, sim))
    assert ident["inputs_sha1"] == inputs_fingerprint(small_inputs())  # deterministic
    other = small_inputs()
    other.user_histories[0] = other.user_histories[0].copy()
    other.user_histories[0][0] = (other.user_histories[0][0] + 1) % 40  # one item of one history
    assert inputs_fingerprint(other) != ident["inputs_sha1"]
    ppo = checkpoint_identity(inputs, sim, apply(cfg, {"algorithm": "PPO"}), ObsSpec.from_inputs(inputs, sim))
    with pytest.raises(CheckpointMismatch, match=r"algorithm: checkpoint 'DQN', this run 'PPO'.*replay_buffer"):
        check_resumable(ident, ppo, tmp_path / "ckpt" / "iter_000001")
    check_resumable(ident, json.loads(json.dumps(ident)), tmp_path)  # its own JSON copy resumes
    d = tmp_path / "ckpt" / "iter_000003"
    d.mkdir(parents=True)
    (d / CHECKPOINT_STATE).write_text(json.dumps({**ident, "iteration": 3, "complete": True}))
    (tmp_path / "ckpt" / "iter_000004").mkdir()  # never completed
    assert find_checkpoint(tmp_path / "ckpt") == d
