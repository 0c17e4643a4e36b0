"""The policy gate (prefmine.policy.gate): the learned policy is served only when its 95% interval lies above
the best heuristic's; heuristic slates order candidates as documented; the decision round-trips through the
bundle file and a tampered one is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefmine.policy.gate import GateDecision, decide, heuristic_slate, mix_chooser


def ev(**figs):
    return {k: {"return_mean": m, "ci95": c} for k, (m, c) in figs.items()}


def test_learned_served_only_outside_the_intervals():
    base = dict(greedy=(2.30, 0.05), popularity=(2.36, 0.05), mix=(2.40, 0.05))
    won = decide(ev(learned=(2.60, 0.05), **base), "learned", alpha=0.7)
    assert won.served == "learned" and won.uses_learned and won.best_heuristic == "mix" and won.alpha == 0.7
    overlap = decide(ev(learned=(2.48, 0.05), **base), "learned")  # 2.43 < 2.45: intervals touch
    assert overlap.served == "mix" and not overlap.uses_learned and "does not beat" in overlap.reason
    lost = decide(ev(learned=(3.051, 0.096), greedy=(3.2, 0.09), popularity=(3.364, 0.094)), "learned",
                  heuristics=("greedy", "popularity"))
    assert lost.served == "popularity"  # the demo's old figures: popularity would have been served
    assert decide(ev(**base), None).served == "mix"
    with pytest.raises(ValueError, match="heuristics"):
        decide(ev(learned=(1, 0)), "learned")


def test_heuristic_slates():
    cands = np.array([10, 11, 12, 13, 11])
    scores = np.array([4.0, 3.0, 2.0, 1.0, 0.5])
    log_pop = np.array([0.0, 1.0, 5.0, 2.0, 1.0])
    assert heuristic_slate("greedy", cands, scores, log_pop, 3).tolist() == [10, 11, 12]
    assert heuristic_slate("popularity", cands, scores, log_pop, 3).tolist() == [12, 13, 11]
    assert heuristic_slate("mix", cands, scores, log_pop, 4, alpha=1.0).tolist() == [10, 11, 12, 13]
    assert heuristic_slate("mix", cands, scores, log_pop, 4, alpha=0.0).tolist() == [12, 13, 11, 10]
    half = heuristic_slate("mix", cands, scores, log_pop, 1, alpha=0.5).tolist()
    assert half == [12]  # z-scores: 12 has (-0.45 + 1.60) / 2, the largest
    with pytest.raises(ValueError, match="known"):
        heuristic_slate("oracle", cands, scores, log_pop, 2)


def test_mix_chooser_masks_invalid_slots():
    class Env:
        cand = np.array([3, 1, 2, 0])
        cand_scores = np.array([1.0, 0.9, 0.8, -9.0])
        valid = np.array([True, True, True, False])

    log_pop = np.array([100.0, 0.0, 9.0, 1.0])  # item 0 most popular but its slot is padding
    assert mix_chooser(log_pop, 0.0)(Env, None, None) == 2
    assert mix_chooser(log_pop, 1.0)(Env, None, None) == 0


def test_decision_round_trips_and_bad_files_are_refused(tmp_path):
    d = decide(ev(learned=(1.0, 0.1), greedy=(2.0, 0.1), popularity=(1.5, 0.1), mix=(2.1, 0.1)), "learned", 0.3)
    d.save(tmp_path)
    back = GateDecision.load(tmp_path)
    assert back == d and back.served == "mix"
    assert GateDecision.load(tmp_path / "missing") is None
    (tmp_path / "gate.json").write_text(json.dumps({**d.to_dict(), "served": "rm -rf"}))
    with pytest.raises(ValueError, match="neither"):
        GateDecision.load(tmp_path)


# -- the simulator scores as serving does, the gate on simulated sessions, serving what the gate chose ----------
def _inputs(blend_beta: float = 0.0, seed: int = 0, n_items: int = 40, users: int = 60, dim: int = 8):
    from prefmine.policy.simulator import build_simulator_inputs
    from prefmine.ranker.blend import ScoreBlend, item_similarity

    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=rng.integers(2, 8)) for _ in range(users)]
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    blend = ScoreBlend(item_similarity(n_items, seqs, 10), blend_beta, vectors) if blend_beta else None
    return build_simulator_inputs(seqs, rng.integers(0, n_items, size=users), n_items,
                                  rng.normal(size=(users, dim)).astype(np.float32), vectors, seed=seed, blend=blend)


def test_the_simulator_proposes_the_served_blended_candidates():
    """With the ranker's blend in its inputs the simulator's candidates and scores are the ones serving computes
    (RankerRuntime: blend.full over state @ item_vectors.T), not the raw ranker scores."""
    from prefmine.policy.simulator import RecSimEnv, SimulatorConfig

    inputs = _inputs(blend_beta=2.0)
    env = RecSimEnv({"inputs": inputs, "config": SimulatorConfig(n_candidates=5, max_steps=4)})
    differs = 0
    for s in range(10):
        env.reset(seed=s)
        served = inputs.blend.full(env.state[None] @ inputs.item_vectors.T.astype(np.float64), [env.history])[0]
        served[np.asarray(env.history)] = -np.inf  # a user's history is never proposed
        top = np.argsort(-served, kind="stable")[:5]
        assert env.cand.tolist() == top.tolist()
        np.testing.assert_allclose(env.cand_scores, served[top], rtol=1e-5)
        raw = env.state @ inputs.item_vectors.T.astype(np.float64)
        raw[np.asarray(env.history)] = -np.inf
        differs += np.argsort(-raw, kind="stable")[:5].tolist() != top.tolist()
        env.step(0)  # after a step the history may have grown: the blend follows it
    assert differs > 0  # the blend changes what is proposed here, so the check above has teeth


class _Wasteful:
    """A learned policy (used as PolicyRuntime is: act(obs, valid)) that answers a padded slot every step, so it
    shows nothing: a policy that certainly loses to every heuristic."""

    def act(self, obs, valid):
        return len(valid)


def test_gate_serves_the_best_heuristic_when_the_learned_policy_loses():
    from prefmine.policy.gate import MIX_ALPHAS, gate_policy
    from prefmine.policy.simulator import SimulatorConfig

    inputs = _inputs(blend_beta=0.5)
    sim_cfg = SimulatorConfig(n_candidates=10, max_steps=10)
    worst = _Wasteful()
    decision, report = gate_policy(inputs, worst, n_sessions=300, seed=3, sim_cfg=sim_cfg)
    pol = report["policies"]
    assert {"learned", "greedy", "popularity", "mix", "random", "oracle_myopic"} <= set(pol)
    assert decision.alpha in MIX_ALPHAS and report["val_seed"] == 4 and set(report["mix_tuning"]) == {
        f"{a:g}" for a in MIX_ALPHAS}
    best = max(("greedy", "popularity", "mix"), key=lambda h: pol[h]["return_mean"])
    assert pol["learned"]["return_mean"] == 0.0 < pol[best]["return_mean"] - pol[best]["ci95"]
    assert decision.served == best == decision.best_heuristic and not decision.uses_learned
    assert decision.figures["learned"]["return_mean"] == pol["learned"]["return_mean"]
    with pytest.raises(ValueError, match="val_seed"):
        gate_policy(inputs, worst, n_sessions=10, seed=3, val_seed=3)


def _policy_bundle(root, gate: GateDecision | None, gate_text: str | None = None):
    """A sealed bundle dir with a policy exported by the real exporter from a real RLlib module, and `gate`."""
    from prefmine.integrity import IntegrityConfig, seal
    from prefmine.policy.config import PolicyTrainConfig
    from prefmine.policy.runtime import save_policy
    from prefmine.policy.simulator import ObsSpec, SimulatorConfig
    from tests.test_bundle_integrity import _module

    inputs = _inputs()
    sim_cfg = SimulatorConfig(n_candidates=10)
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    bundle = root / "bundle"
    save_policy(_module("DQN", spec.size, sim_cfg.n_candidates), bundle / "policy", inputs, sim_cfg,
                PolicyTrainConfig(hiddens=(32, 16)), spec, {})
    if gate is not None:
        gate.save(bundle / "policy")
    if gate_text is not None:
        (bundle / "policy" / "gate.json").write_text(gate_text)
    seal(bundle, {"format": "prefmine-bundle/2", "version": "v1"}, IntegrityConfig())
    return bundle, inputs


@pytest.mark.parametrize("served, alpha", [("popularity", 1.0), ("mix", 0.5), ("greedy", 1.0)])
def test_serving_orders_the_slate_by_the_heuristic_the_gate_chose(tmp_path, served, alpha):
    from prefmine.serving.policy import PolicyVersion

    gate = decide(ev(learned=(1.0, 0.1), greedy=(2.0, 0.1), popularity=(1.5, 0.1), mix=(1.8, 0.1)), "learned",
                  alpha)
    gate.served = gate.best_heuristic = served
    bundle, inputs = _policy_bundle(tmp_path, gate)
    pv = PolicyVersion(str(bundle))
    assert pv.kind == served and pv.label == served and pv.gate == gate
    rng = np.random.default_rng(1)
    log_pop = np.log1p(inputs.item_popularity)
    for _ in range(5):
        cands = rng.choice(len(log_pop), size=12, replace=False)
        scores = np.sort(rng.normal(size=12))[::-1]  # served candidates come in ranker order
        slate, props = pv.select(rng.normal(size=8), cands, scores, 6, return_propensities=True)
        if served == "greedy":
            key = -scores
        elif served == "popularity":
            key = -log_pop[cands]
        else:
            z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
            key = -(alpha * z(scores) + (1 - alpha) * z(log_pop[cands]))
        assert slate.tolist() == cands[np.argsort(key, kind="stable")[:6]].tolist()
        assert props.tolist() == [1.0] * 6


def test_serving_keeps_the_learned_policy_where_it_won_or_without_a_gate(tmp_path):
    from prefmine.policy.runtime import PolicyRuntime
    from prefmine.serving.policy import PolicyVersion

    won = decide(ev(learned=(3.0, 0.1), greedy=(2.0, 0.1), popularity=(1.5, 0.1), mix=(1.8, 0.1)), "learned")
    for gate, name in ((won, "won"), (None, "none")):
        bundle, _ = _policy_bundle(tmp_path / name, gate)
        pv = PolicyVersion(str(bundle))
        assert pv.kind == "learned" and (pv.gate == gate)
        rng = np.random.default_rng(2)
        state, cands, scores = rng.normal(size=8), rng.choice(40, size=12, replace=False), np.linspace(2, 0, 12)
        expect = PolicyRuntime(bundle).select(state, cands, scores, 6)
        assert pv.select(state, cands, scores, 6).tolist() == list(expect)


def test_a_broken_gate_refuses_the_version(tmp_path):
    from prefmine.serving.policy import PolicyVersion

    bundle, _ = _policy_bundle(tmp_path, None, json.dumps({"served": "oracle_myopic", "learned": "learned"}))
    with pytest.raises(ValueError, match="neither"):
        PolicyVersion(str(bundle))
