"""The incremental policy update job (cluster/update_policy.py) on a real bundle and a real SQLite feedback log.

The bundle is the suite's tiny bundle (real ranker, real DQN policy on Magazine 5-core); the feedback log is
written here with the same FeedbackLog that serving uses. The parent bundle is shared with other tests, so the
job writes its versions under tmp_path and the test checks that the parent is left untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefmine.feedback import FeedbackEvent, FeedbackLog

REPO = Path(__file__).resolve().parents[1]
TS = 1_700_000_000


def _obs_batch(runtime, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, runtime.spec.size)).astype(np.float32)


def _assert_served_as_gated(version: Path, summary: dict, parent: dict, consumed_id: int, sessions: int) -> None:
    """The version carries its own gate: gate.json's decision follows from its figures (the rule worked out here,
    not by the gate's code), the manifest and the job's summary say the same with the update's lineage, and
    serving's policy loader orders slates with the policy the gate chose."""
    from prefmine.bundle import read_manifest
    from prefmine.policy.gate import HEURISTICS, GateDecision, heuristic_slate
    from prefmine.serving.policy import PolicyVersion

    gate = GateDecision.load(version / "policy")
    assert gate is not None and gate.learned == "learned" and set(gate.figures) == {"learned", *HEURISTICS}
    fig = gate.figures
    best = max(HEURISTICS, key=lambda h: fig[h]["return_mean"])
    wins = fig["learned"]["return_mean"] - fig["learned"]["ci95"] > fig[best]["return_mean"] + fig[best]["ci95"]
    assert gate.best_heuristic == best and gate.served == ("learned" if wins else best)
    record = read_manifest(version)["components"]["policy"]["gate"]
    assert record["served"] == gate.served and record["figures"] == fig and record["sessions"] == sessions
    assert record["lineage"] == {"by": "update_policy", "parent_version": parent["version"],
                                 "parent_served": parent["components"]["policy"]["gate"]["served"],
                                 "feedback_consumed_id": consumed_id}
    assert summary["serves"] == gate.served and summary["gate"]["figures"] == fig

    served = PolicyVersion(str(version))
    assert served.kind == gate.served and served.gate.to_dict() == gate.to_dict()
    cands, scores = np.arange(20), np.linspace(1, 0, 20)
    if gate.uses_learned:
        expected = served.runtime.select(np.zeros(served.runtime.spec.dim, dtype=np.float32), cands, scores, 5)
    else:
        log_pop = np.log1p(np.load(version / "policy" / "item_popularity.npy"))
        expected = heuristic_slate(gate.served, cands, scores, log_pop[cands], 5, gate.alpha)
    slate = served.select(np.zeros(served.runtime.spec.dim, dtype=np.float32), cands, scores, 5)
    np.testing.assert_array_equal(slate, expected)


@pytest.mark.slow
def test_update_job_consumes_feedback_and_writes_new_versions(tiny_bundle, ray_session, tmp_path):
    from cluster.update_policy import UpdateConfig, update_policy
    from prefmine.bundle import read_manifest
    from prefmine.policy.response import load_response
    from prefmine.policy.runtime import PolicyRuntime

    parent_manifest = (tiny_bundle / "manifest.json").read_text()
    parent_hist = pd.read_parquet(tiny_bundle / "catalog" / "histories.parquet")
    parent_pop = np.load(tiny_bundle / "catalog" / "popularity.npy")
    item_ids = pd.read_parquet(tiny_bundle / "catalog" / "items.parquet")["item"].astype(str).tolist()
    hist = {u: list(s) for u, s in zip(parent_hist["user"], parent_hist["items"])}
    users = list(hist)[:3]
    picked: list[int] = []
    for u in users + [None, users[1], users[2]]:  # distinct items, each new to its user
        picked.append(next(i for i in np.argsort(parent_pop) if int(i) not in picked
                           and (u is None or int(i) not in hist[u])))
    a, b, c, d, e, f = map(int, picked)

    log = FeedbackLog(tmp_path / "feedback.sqlite")
    first = log.append([
        FeedbackEvent(users[0], item_ids[a], "click", TS), FeedbackEvent(users[0], item_ids[a], "buy", TS + 1),
        FeedbackEvent(users[1], item_ids[b], "rate", TS + 2, 5.0),
        FeedbackEvent(users[2], item_ids[c], "view", TS + 3),
        FeedbackEvent("a-new-pseudonym", item_ids[d], "click", TS + 4),
        FeedbackEvent(users[0], "NOT-AN-ITEM", "click", TS + 5),
    ])

    # 1. zero training iterations: the new version's policy is exactly the serving one (warm start is real)
    v2 = tmp_path / "v2"
    s1 = update_policy(tiny_bundle, tmp_path / "feedback.sqlite", v2, UpdateConfig(max_iterations=0),
                       verbose=False)
    assert s1["updated"] and s1["consumed_from"] == 0 and s1["consumed_id"] == first and s1["new_events"] == 6
    assert s1["counts"]["unknown_item"] == 1 and s1["counts"]["views"] == 1 and s1["counts"]["new_users"] == 1
    m2 = read_manifest(v2)
    assert m2["components"]["policy"]["feedback_consumed_id"] == first
    assert m2["parent_version"] == json.loads(parent_manifest)["version"] != m2["version"]
    old_rt, new_rt = PolicyRuntime(tiny_bundle), PolicyRuntime(v2)
    obs = _obs_batch(old_rt)
    np.testing.assert_array_equal(old_rt.q_values(obs), new_rt.q_values(obs))
    h2 = pd.read_parquet(v2 / "catalog" / "histories.parquet")
    h2 = {u: list(s) for u, s in zip(h2["user"], h2["items"])}
    assert h2[users[0]] == hist[users[0]] + [a] and h2[users[1]] == hist[users[1]] + [b]
    assert h2[users[2]] == hist[users[2]]  # a view is not an interaction
    # gated like a trained bundle, on the serving policy's gate_sessions (the suite's config: 200)
    _assert_served_as_gated(v2, s1, json.loads(parent_manifest), first, sessions=200)
    assert h2["a-new-pseudonym"] == [d]
    pop2 = np.load(v2 / "catalog" / "popularity.npy")
    assert pop2[a] == parent_pop[a] + 1 and pop2[b] == parent_pop[b] + 1 and pop2[c] == parent_pop[c]
    buy_old = load_response(tiny_bundle / "policy" / "response_model.npz").buy_prob
    buy_new = load_response(v2 / "policy" / "response_model.npz").buy_prob
    assert buy_new[a] > buy_old[a] and buy_new[b] > buy_old[b]  # a buy and a 5-star rating are purchases
    assert buy_new[d] < buy_old[d]  # a click without a purchase
    # the serving bundle is untouched
    assert (tiny_bundle / "manifest.json").read_text() == parent_manifest
    pd.testing.assert_frame_equal(pd.read_parquet(tiny_bundle / "catalog" / "histories.parquet"), parent_hist)
    np.testing.assert_array_equal(np.load(tiny_bundle / "catalog" / "popularity.npy"), parent_pop)

    # 2. nothing new since v2: no new version
    s2 = update_policy(v2, tmp_path / "feedback.sqlite", tmp_path / "v3", verbose=False)
    assert not s2["updated"] and s2["new_events"] == 0 and not (tmp_path / "v3").exists()

    # 3. new events: only those are read, training continues from v2's policy
    second = log.append([FeedbackEvent(users[1], item_ids[e], "click", TS + 10),
                         FeedbackEvent(users[2], item_ids[f], "cart", TS + 11)])
    log.close()
    s3 = update_policy(v2, tmp_path / "feedback.sqlite", tmp_path / "v3",
                       UpdateConfig(max_iterations=2, time_budget_s=30.0, learning_starts=100, gate_sessions=50),
                       verbose=False)
    assert s3["updated"] and s3["consumed_from"] == first and s3["consumed_id"] == second and s3["new_events"] == 2
    assert s3["train"]["env_steps"] >= 1000
    m3 = read_manifest(tmp_path / "v3")
    assert m3["parent_version"] == m2["version"] and m3["components"]["policy"]["feedback_consumed_id"] == second
    rt3 = PolicyRuntime(tmp_path / "v3")
    assert not np.array_equal(rt3.q_values(obs), new_rt.q_values(obs))  # it trained
    _assert_served_as_gated(tmp_path / "v3", s3, m2, second, sessions=50)  # the job's own gate_sessions
    state = np.zeros(rt3.spec.dim, dtype=np.float32)
    slate = rt3.select(state, np.arange(20), np.linspace(1, 0, 20), k=5)
    assert len(set(slate.tolist())) == 5
    assert not list(tmp_path.glob(".v*"))  # no temporary directory left behind


def test_update_cli_rejects_missing_inputs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cluster.update_policy", "--bundle", str(tmp_path / "nope"),
                        "--feedback", str(tmp_path / "fb.sqlite")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--bundle" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cluster.update_policy", "--bundle", str(tmp_path),
                        "--feedback", "x", "--set", "no_such_key=1"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no_such_key" in r.stderr
