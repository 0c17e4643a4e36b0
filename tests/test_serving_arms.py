"""A/B arms as the server runs them, in process: which experiments a server accepts (policy and version arms;
unknown policies and empty bundle locations refused naming the field), users' arms stable and split by the weights, and an arm's policy
ordering a slate through the same PolicyVersion the ranker deployment holds. The live path (arms over gRPC, their
impressions, counters and report) is in tests/test_serve_loop.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefmine.experiments import ExperimentConfig, assign
from prefmine.policy.gate import heuristic_slate
from prefmine.serving.arms import arm_of, servable_experiment
from prefmine.serving.policy import DEFAULT_MIX_ALPHA, PolicyVersion

EXP = {"name": "ab", "salt": "s1", "arms": [{"name": "control", "weight": 1},
                                           {"name": "popular", "weight": 3, "policy": "popularity"}]}


def test_a_server_runs_policy_and_version_arms_and_refuses_what_it_cannot_serve():
    """A version arm passes here (its bundle is checked where the server starts, serve.app.arm_versions:
    tests/test_serve_loop.py and the pinned control of tests/test_update_loop.py); an empty location does not."""
    exp = servable_experiment(EXP)
    assert [a.policy for a in exp.arms] == [None, "popularity"]
    pinned = servable_experiment({**EXP, "arms": [EXP["arms"][0], {"name": "v2", "bundle": "/bundles/v2"}]})
    assert pinned.arms[1].bundle == "/bundles/v2"
    with pytest.raises(ValueError, match=r"experiment\.arms\[1\]\.bundle"):
        servable_experiment({**EXP, "arms": [EXP["arms"][0], {"name": "v2", "bundle": " "}]})
    with pytest.raises(ValueError, match=r"experiment\.arms\[0\]\.policy.*'random'"):
        servable_experiment({**EXP, "arms": [{"name": "r", "policy": "random"}]})
    with pytest.raises(ValueError, match="salt"):
        servable_experiment({**EXP, "salt": ""})


def test_arms_are_stable_per_user_and_split_by_the_weights():
    exp = servable_experiment(EXP)
    users = [f"pseudonym-{i}" for i in range(8000)]
    first = [arm_of(exp, u).name for u in users]
    assert first == [arm_of(exp, u).name for u in users] == [assign(u, exp).name for u in users]
    share = first.count("popular") / len(users)
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(users))  # binomial, 4 sigma
    assert arm_of(None, "anyone") is None


@pytest.fixture
def greedy_version(tmp_path) -> PolicyVersion:
    """The policy of a bundle directory without policy/ (served greedy) whose catalogue has item popularity."""
    (tmp_path / "catalog").mkdir()
    np.save(tmp_path / "catalog" / "popularity.npy", np.array([5.0, 100.0, 1.0, 40.0, 0.0, 7.0]))
    return PolicyVersion(str(tmp_path))


def test_an_arm_policy_orders_the_slate(greedy_version):
    cands, scores = np.array([0, 1, 2, 3, 5]), np.array([0.9, 0.1, 0.8, 0.3, 0.5])
    v = greedy_version
    assert v.select(None, cands, scores, 3).tolist() == [0, 2, 5]  # its own order: the ranker's
    assert v.select(None, cands, scores, 3, policy="greedy").tolist() == [0, 2, 5]
    slate, props = v.select(None, cands, scores, 3, return_propensities=True, policy="popularity")
    assert slate.tolist() == [1, 3, 5] and props.tolist() == [1.0, 1.0, 1.0]
    pop = np.log1p(np.array([5.0, 100.0, 1.0, 40.0, 0.0, 7.0]))
    order = np.argsort(-scores, kind="stable")
    assert v.select(None, cands, scores, 4, policy="mix").tolist() == heuristic_slate(
        "mix", cands[order], scores[order], pop[cands[order]], 4, DEFAULT_MIX_ALPHA).tolist()
    assert (v.label_for("popularity"), v.label_for("mix"), v.label_for(None)) == ("popularity", "mix", "greedy")
    # `learned` where the version has no learned policy: its own order, and the label says so
    assert v.select(None, cands, scores, 3, policy="learned").tolist() == [0, 2, 5]
    assert v.label_for("learned") == "greedy"
    with pytest.raises(ValueError, match="random"):
        v.select(None, cands, scores, 3, policy="random")


def test_experiment_config_round_trips_through_the_app_args():
    exp = servable_experiment(EXP)
    assert ExperimentConfig.from_dict(exp.to_dict()) == exp
