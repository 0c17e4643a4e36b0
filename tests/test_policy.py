"""Policy: response model, simulator contract, RLlib DQN and PPO training, export and serve-time reload,
evaluation with confidence intervals, off-policy estimates on logged data.

Real data: the Amazon 2018 Magazine_Subscriptions 5-core reviews under $PREFMINE_DATA_DIR (default
../shared/data beside the repo). The "ranker" here is a truncated SVD of the train user-item matrix, which
gives the same interface as the real ranker (user states, item vectors, score = state @ vectors.T).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from prefmine.config import apply
from prefmine.policy.response import auc, fit_response_model
from prefmine.policy.simulator import (
    RecSimEnv,
    SimulatorConfig,
    build_obs,
    build_simulator_inputs,
    top_candidates,
)
from prefmine.train_config import PRESETS

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PREFMINE_DATA_DIR", REPO.parent / "shared" / "data"))
MAGAZINE = DATA_DIR / "amazon2018" / "Magazine_Subscriptions" / "Magazine_Subscriptions_5.json.gz"
DIM = 16


def _load_magazine():
    """Leave-one-out by time per user (ties by file order): train seqs, valid, test, flat train ratings."""
    if not MAGAZINE.is_file():
        pytest.skip(f"real data not found at {MAGAZINE} (set PREFMINE_DATA_DIR)")
    events: dict[str, list] = {}
    items: dict[str, int] = {}
    with gzip.open(MAGAZINE, "rt") as f:
        for line_no, line in enumerate(f):
            r = json.loads(line)
            idx = items.setdefault(r["asin"], len(items))
            events.setdefault(r["reviewerID"], []).append((int(r["unixReviewTime"]), line_no, idx,
                                                           float(r["overall"])))
    seqs, valid, test, rated, ratings = [], [], [], [], []
    for ev in events.values():
        ev.sort()
        its = [e[2] for e in ev]
        seqs.append(np.asarray(its[:-2], dtype=np.int64))
        valid.append(its[-2])
        test.append(its[-1])
        rated += its[:-2]
        ratings += [e[3] for e in ev[:-2]]
    return seqs, np.asarray(valid), np.asarray(test), len(items), np.asarray(rated), np.asarray(ratings)


@pytest.fixture(scope="session")
def magazine():
    return _load_magazine()


@pytest.fixture(scope="session")
def inputs(magazine):
    seqs, valid, _, n_items, rated, ratings = magazine
    x = np.zeros((len(seqs), n_items))
    for u, s in enumerate(seqs):
        x[u, s] = 1.0
    u_, s_, vt = np.linalg.svd(x, full_matrices=False)
    states, vectors = u_[:, :DIM] * np.sqrt(s_[:DIM]), vt[:DIM].T * np.sqrt(s_[:DIM])
    return build_simulator_inputs(seqs, valid, n_items, states, vectors, rated_items=rated, ratings=ratings)


@pytest.fixture(scope="session")
def ray_local(ray_session):
    """The suite's one local Ray (tests/conftest.py)."""
    return ray_session


# ---- response model ---------------------------------------------------------------------------------------

def test_response_model_auc_on_real_data(magazine):
    seqs, valid, test, n_items, rated, ratings = magazine
    model = fit_response_model(seqs, valid, n_items, rated_items=rated, ratings=ratings)
    # Honest check: the test item (never used in fitting) given the history train + valid.
    held_out = auc(model, [np.r_[s, v] for s, v in zip(seqs, valid)], test)
    assert held_out > 0.6, held_out
    assert 0.0 < model.buy_prob.min() <= model.buy_prob.max() < 1.0
    p = model.click_prob(seqs[0], np.arange(n_items), position=3)
    assert np.all((p >= 0) & (p <= 1))


# ---- simulator contract -----------------------------------------------------------------------------------

def _rollout(env, seed, policy=lambda env, obs, i: i % env.cfg.n_candidates):
    obs, _ = env.reset(seed=seed)
    trace, done, i = [obs], False, 0
    while not done:
        obs, r, term, trunc, info = env.step(policy(env, obs, i))
        trace.append((obs, r, term, trunc, info["item"], info["click"]))
        done, i = term or trunc, i + 1
    return trace


def test_simulator_seeded_determinism_bounds_and_termination(inputs):
    cfg = apply(PRESETS["tiny"].simulator, {"leave_prob": 0.0, "leave_prob_skip": 0.05})
    env, env2 = RecSimEnv({"inputs": inputs, "config": cfg}), RecSimEnv({"inputs": inputs, "config": cfg})
    assert env.observation_space.shape == (DIM + 3 * cfg.n_candidates + 1,)
    for seed in range(30):
        a, b = _rollout(env, seed), _rollout(env2, seed)
        assert len(a) == len(b)
        np.testing.assert_array_equal(a[0], b[0])
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x[0], y[0])
            assert x[1:] == y[1:]
        assert 1 <= len(a) - 1 <= cfg.max_steps
        assert env.observation_space.contains(a[-1][0])
        for _, r, *_ in a[1:]:
            assert 0.0 <= r <= 1.0 + cfg.purchase_value
        shown = [t[4] for t in a[1:]]
        assert len(set(shown)) == len(shown)  # nothing shown twice in a session
    # different seeds give different sessions (user, candidates, clicks)
    firsts = {tuple(np.round(_rollout(env, s)[0], 5)) for s in range(10)}
    assert len(firsts) > 1


def test_simulator_sampled_rewards_and_history_exclusion(inputs):
    cfg = SimulatorConfig(expected_reward=False)
    env = RecSimEnv({"inputs": inputs, "config": cfg})
    rewards = set()
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        hist = set(inputs.user_histories[info["user"]].tolist())
        assert not hist & set(env.cand[env.valid].tolist())
        for t in _rollout(env, seed)[1:]:
            rewards.add(t[1])
    assert rewards <= {0.0, 1.0, 1.0 + cfg.purchase_value} and len(rewards) >= 2


def test_obs_builder_matches_env(inputs):
    env = RecSimEnv({"inputs": inputs, "config": SimulatorConfig()})
    obs, _ = env.reset(seed=3)
    obs, *_ = env.step(2)
    scores = inputs.item_vectors @ env.state.astype(np.float32)
    pool = np.flatnonzero(~env._blocked)
    items, sc, valid = top_candidates(pool, scores[pool], env.cfg.n_candidates)
    np.testing.assert_array_equal(items, env.cand)
    again = build_obs(env.spec_obs, env.state, items, sc, valid, np.log1p(inputs.item_popularity),
                      env._unit, env.shown, env.t)
    np.testing.assert_allclose(again, obs, rtol=1e-6)
    assert pickle.loads(pickle.dumps(inputs)).user_states.shape == inputs.user_states.shape


# ---- RLlib training, export, runtime ----------------------------------------------------------------------

def _train_with_probe(inputs, out, overrides):
    """Train; on the last iteration record the live Algorithm module's scores on fixed observations."""
    from cluster.train_policy import train_policy
    from prefmine.policy.runtime import ModulePolicy

    cfg = apply(PRESETS["tiny"].policy, overrides)
    env = RecSimEnv({"inputs": inputs, "config": SimulatorConfig()})
    probe_obs = np.stack([env.reset(seed=s)[0] for s in range(16)])
    live = {}

    def on_iteration(algo, row):
        live["scores"] = ModulePolicy(algo.get_module(), cfg.algorithm).q_values(probe_obs)

    t0 = time.time()
    metrics = train_policy(inputs, out, cfg, verbose=False, on_iteration=on_iteration)
    metrics["wall_s"] = time.time() - t0
    metrics["probe_obs"], metrics["live_scores"] = probe_obs, live["scores"]
    return out, metrics


@pytest.fixture(scope="session")
def trained(inputs, ray_local, tmp_path_factory):
    return _train_with_probe(inputs, tmp_path_factory.mktemp("policy") / "policy",
                             {"max_iterations": 8, "time_budget_s": 75.0})


@pytest.fixture(scope="session")
def trained_ppo(inputs, ray_local, tmp_path_factory):
    return _train_with_probe(inputs, tmp_path_factory.mktemp("policy_ppo") / "policy",
                             {"algorithm": "PPO", "max_iterations": 12, "time_budget_s": 45.0})


def _check_learned_beats_random(out, metrics, inputs, algorithm):
    from prefmine.policy.evaluation import evaluate_policies
    from prefmine.policy.runtime import PolicyRuntime

    assert (out / "policy_config.json").is_file() and (out / "policy.safetensors").is_file()
    assert not (out / "rl_module").exists()  # no RLModule checkpoint: it is loaded by unpickling
    conf = json.loads((out / "policy_config.json").read_text())
    assert conf["algorithm"] == algorithm and conf["serving"] == {"epsilon": 0.0}
    assert conf["n_candidates"] == 10 and conf["obs_size"] == DIM + 31
    assert metrics["env_steps"] >= 3000
    rt = PolicyRuntime(out)
    # export/reload: the reloaded module scores exactly like the Algorithm's module did after the last iteration
    np.testing.assert_allclose(rt.q_values(metrics["probe_obs"]), metrics["live_scores"], rtol=0, atol=1e-6)
    ev = evaluate_policies(inputs, rt, n_sessions=400, seed=11)
    print(algorithm, {k: {m: v for m, v in r.items() if m in ("return_mean", "ci95", "ctr")} for k, r in ev.items()},
          metrics["train_seconds"])
    assert set(ev) == {"learned", "greedy", "popularity", "random"}
    assert ev["learned"]["return_mean"] > ev["random"]["return_mean"]
    assert ev["greedy"]["return_mean"] > ev["random"]["return_mean"]
    return ev


@pytest.mark.slow
def test_dqn_beats_random_and_exports(trained, inputs):
    _check_learned_beats_random(*trained, inputs, "DQN")


@pytest.mark.slow
def test_ppo_beats_random_and_exports(trained_ppo, inputs):
    _check_learned_beats_random(*trained_ppo, inputs, "PPO")


def test_evaluation_reports_intervals_for_return_ctr_conversion(inputs):
    from prefmine.policy.evaluation import evaluate_policies

    ev = evaluate_policies(inputs, None, n_sessions=300, seed=5, sim_cfg=SimulatorConfig())
    assert set(ev) == {"greedy", "popularity", "random"}
    for r in ev.values():
        assert r["sessions"] == 300 and r["ci95"] > 0 and r["ctr_ci95"] > 0 and r["conversion_ci95"] > 0
        assert 0 < r["conversion"] <= r["ctr"] < 1
        assert 1 <= r["session_len_mean"] <= SimulatorConfig().max_steps
    assert ev["greedy"]["vs_greedy"] == {"diff_mean": 0.0, "ci95": 0.0}
    # common random numbers: the paired interval is tighter than the unpaired ones
    assert ev["random"]["vs_greedy"]["ci95"] < ev["random"]["ci95"] + ev["greedy"]["ci95"]
    again = evaluate_policies(inputs, None, n_sessions=300, seed=5, sim_cfg=SimulatorConfig())
    assert again == ev  # seeded: the same numbers


def test_off_policy_estimates_on_logged_data(inputs, magazine):
    from prefmine.policy.offpolicy import CAVEATS, off_policy_estimates
    from prefmine.policy.simulator import ObsSpec

    seqs, valid, *_ = magazine
    spec = ObsSpec.from_inputs(inputs, SimulatorConfig())
    keep = np.array([len(s) > 0 for s in seqs])  # inputs holds the users with a train history, in order
    actions = valid[keep]
    rewards = 1.0 + (np.arange(len(actions)) % 2)  # any positive rewards; the check is about the weights
    pols = {"greedy": lambda o, i, v: -np.arange(len(i), dtype=float),
            "worst_of_top_n": lambda o, i, v: np.where(v, np.arange(len(i), dtype=float), -1.0),
            "random": None}
    r = off_policy_estimates(pols, spec, inputs.user_states, inputs.user_histories, actions, rewards,
                             inputs.item_vectors, inputs.item_popularity, epsilon=0.1, n_boot=200)
    p = r["policies"]
    in_top = round(r["in_top_n_share"] * r["events"])
    for v in p.values():  # epsilon-greedy and uniform policies cover every top-N candidate
        assert v["matched"] == in_top and 0 < v["ess"] <= v["matched"]
        assert v["ips_ci95"][0] <= v["ips"] <= v["ips_ci95"][1]
        assert 1.0 <= v["snips"] <= 2.0
    # the ranker stand-in predicts next items: its top pick matches the log more often than its N-th
    assert p["greedy"]["ips"] > p["random"]["ips"] > p["worst_of_top_n"]["ips"]
    assert r["caveats"] == CAVEATS


@pytest.mark.slow
def test_runtime_reload_is_identical_and_deterministic(trained, inputs):
    from prefmine.policy.runtime import PolicyRuntime

    out, _ = trained
    a, b = PolicyRuntime(out), PolicyRuntime(out)
    env = RecSimEnv({"inputs": inputs, "config": SimulatorConfig(**a.config["simulator"])})
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_allclose(a.q_values(obs), b.q_values(obs), rtol=0, atol=0)
    rng = np.random.default_rng(0)
    t0, n_calls = time.perf_counter(), 0
    for u in rng.choice(len(inputs.user_states), 20, replace=False):
        state = inputs.user_states[u]
        scores = inputs.item_vectors @ state
        cands = np.argsort(-scores)[:30]
        slate = a.select(state, cands, scores[cands], k=5)
        n_calls += 1
        assert len(slate) == 5 and len(set(slate.tolist())) == 5 and set(slate.tolist()) <= set(cands.tolist())
        np.testing.assert_array_equal(slate, b.select(state, cands, scores[cands], k=5))
        np.testing.assert_array_equal(slate, a.select(state, cands, scores[cands], k=5, epsilon=0.0))
        # fewer candidates than N and k: padded slots are masked, every candidate used once
        few = a.select(state, cands[:4], scores[cands[:4]], k=6)
        assert sorted(few.tolist()) == sorted(cands[:4].tolist())
    assert (time.perf_counter() - t0) / n_calls < 0.5  # a 5-slot slate is a handful of ms
    explored = {tuple(a.select(inputs.user_states[0], cands, scores[cands], 5, epsilon=1.0,
                               rng=np.random.default_rng(s))) for s in range(5)}
    assert len(explored) > 1


def test_train_policy_cli_help():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cluster.train_policy", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--inputs" in r.stdout


# ---- the per-candidate network (policy: {network: per_candidate}) -------------------------------------------

def _candidate_permutation(obs: np.ndarray, dim: int, n: int, perm: np.ndarray) -> np.ndarray:
    """obs with its N candidates reordered by `perm` (each of the 3 per-candidate feature blocks)."""
    out = obs.copy()
    for f in range(3):
        block = slice(dim + f * n, dim + (f + 1) * n)
        out[..., block] = obs[..., block][..., perm]
    return out


def test_per_candidate_network_exports_reloads_and_is_permutation_equivariant(inputs, tmp_path):
    """The RLlib module (as DQN builds it) exported by save_policy and reloaded by PolicyRuntime gives the same
    Q-values; permuting the candidates permutes them; a flat network would not (the check can fail)."""
    import torch

    from cluster.train_policy import dqn_config
    from prefmine.policy.runtime import PolicyRuntime, module_scores, save_policy
    from prefmine.policy.simulator import ObsSpec

    sim_cfg = SimulatorConfig()
    cfg = apply(PRESETS["tiny"].policy, {"network": "per_candidate", "hiddens": (16, 16), "state_hidden": 8})
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    env = RecSimEnv({"inputs": inputs, "config": sim_cfg, "obs_spec": spec})
    torch.manual_seed(0)
    module = dqn_config(inputs, sim_cfg, cfg, spec).get_rl_module_spec(env=env).build()
    save_policy(module, tmp_path / "pol", inputs, sim_cfg, cfg, spec, {})
    rt = PolicyRuntime(tmp_path / "pol")
    desc = json.loads((tmp_path / "pol" / "network.json").read_text())
    assert desc["network"] == "per_candidate" and desc["n_actions"] == sim_cfg.n_candidates
    obs = np.stack([env.reset(seed=s)[0] for s in range(16)] + [env.step(1)[0] for _ in range(4)])
    q = rt.q_values(obs)
    np.testing.assert_allclose(q, module_scores(module, "DQN", obs), rtol=1e-5, atol=1e-6)
    assert np.ptp(q, axis=1).min() > 0  # an untrained net still tells candidates apart
    perm = np.random.default_rng(0).permutation(sim_cfg.n_candidates)
    np.testing.assert_allclose(rt.q_values(_candidate_permutation(obs, spec.dim, spec.n_candidates, perm)),
                               q[:, perm], rtol=1e-5, atol=1e-6)
    # the flat network over the same obs is not equivariant: the property is the architecture's
    flat = dqn_config(inputs, sim_cfg, apply(cfg, {"network": "flat"}), spec).get_rl_module_spec(env=env).build()
    qf = module_scores(flat, "DQN", obs)
    assert not np.allclose(module_scores(flat, "DQN", _candidate_permutation(obs, spec.dim, spec.n_candidates,
                                                                             perm)), qf[:, perm], atol=1e-4)
    # warm start (update job) reads the exported tensors back under the module's own names
    state = module.state_dict()
    from prefmine.policy.network import load_tensors

    for name, t in load_tensors(tmp_path / "pol").items():
        assert torch.equal(state[name].float(), t)
