"""A/B experiments (prefmine.experiments): arms are stable per user across processes and follow their weights,
bad configs are refused naming the field, the Wilson interval matches its closed form, the user-clustered interval
matches the Wald interval with one impression a user and a cluster bootstrap with many, and the report over a real
feedback store (SQLite file and the session's PostgreSQL) counts exactly what a brute-force join counts, also
through `prefmine experiments report`.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from prefmine.experiments import (
    ExperimentConfig,
    assign,
    clustered_ratio,
    format_report,
    load_experiment,
    report,
    wilson,
)
from prefmine.feedback import FeedbackEvent, Impression, open_feedback_store

ROOT = Path(__file__).resolve().parents[1]
EXP = {"name": "policy-vs-greedy", "salt": "2026-12", "arms": [
    {"name": "learning", "weight": 3, "policy": "learned"},
    {"name": "control", "weight": 1, "policy": "greedy"}]}


def test_assignment_is_stable_across_processes_and_follows_weights():
    exp = ExperimentConfig.from_dict(EXP)
    users = [f"user{i}" for i in range(20_000)]
    here = [assign(u, exp).name for u in users[:200]]
    code = ("import sys, json; from prefmine.experiments import ExperimentConfig, assign; "
            f"e = ExperimentConfig.from_dict({EXP!r}); "
            "print(json.dumps([assign(f'user{i}', e).name for i in range(200)]))")
    there = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}).stdout)
    assert here == there
    share = sum(assign(u, exp).name == "learning" for u in users) / len(users)
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(users))  # binomial, 4 sigma
    other_salt = ExperimentConfig.from_dict({**EXP, "salt": "another"})
    moved = sum(assign(u, exp).name != assign(u, other_salt).name for u in users[:2000])
    assert moved > 400  # a new salt reshuffles (expected 2 * 0.75 * 0.25 = 37.5%)


@pytest.mark.parametrize("bad, field", [
    ({**EXP, "arms": []}, "no arms"),
    ({**EXP, "salt": ""}, "salt"),
    ({**EXP, "arms": [{"name": "a"}, {"name": "a"}]}, "repeats"),
    ({**EXP, "arms": [{"name": "a", "weight": 0}]}, "weight"),
    ({**EXP, "arms": [{"name": "a", "wieght": 2}]}, "wieght"),
    ({**EXP, "colour": 1}, "colour"),
])
def test_bad_experiments_are_refused_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ExperimentConfig.from_dict(bad)


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 0.0)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959963984540054 ** 2 / 10 / (1 + 1.959963984540054 ** 2 / 10))
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson(1000, 1000)
    assert hi == 1.0 and 0.996 < lo < 1.0


def test_clustered_interval_is_wald_for_one_impression_a_user_and_a_cluster_bootstrap_for_many():
    """With one impression a user it is the Wald interval (n - 1 in the variance); with users who see many
    slates and differ in taste, it matches a bootstrap that resamples users, and Wilson's per-impression
    interval is far narrower than both (what clustering corrects)."""
    assert clustered_ratio([], []) == (0.0, 0.0, 0.0) and clustered_ratio([3], [4]) == (0.75, 0.75, 0.75)
    x = np.array([1] * 30 + [0] * 70)
    r, lo, hi = clustered_ratio(x, np.ones(100))
    assert r == 0.3 and (hi - lo) / 2 == pytest.approx(1.959963984540054 * math.sqrt(0.3 * 0.7 / 99))

    rng = np.random.default_rng(3)
    n_users = 300
    views = rng.integers(1, 40, n_users)
    taste = rng.beta(2, 3, n_users)  # each user's own click rate
    clicks = rng.binomial(views, taste)
    r, lo, hi = clustered_ratio(clicks, views)
    boot = []
    for _ in range(4000):
        pick = rng.integers(0, n_users, n_users)
        boot.append(clicks[pick].sum() / views[pick].sum())
    b_lo, b_hi = np.percentile(boot, [2.5, 97.5])
    assert r == clicks.sum() / views.sum() and lo < r < hi
    assert (hi - lo) == pytest.approx(b_hi - b_lo, rel=0.1)
    w_lo, w_hi = wilson(int(clicks.sum()), int(views.sum()))
    assert (w_hi - w_lo) < 0.6 * (hi - lo)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def test_report_equals_a_brute_force_join(location, tmp_path):
    exp = ExperimentConfig.from_dict(EXP)
    rng = random.Random(7)
    store = open_feedback_store(location)
    truth = {"learning": [0, 0, 0, set()], "control": [0, 0, 0, set()]}
    per_user = {"learning": {}, "control": {}}  # user -> [impressions, clicked]
    try:
        for n in range(600):
            user = f"u{rng.randrange(150)}"
            iid = str(uuid.uuid4())
            # the arm logged is what counts: mostly the hash's arm, some logged under an earlier salt (the other
            # arm), some with no experiment running (not counted in any arm)
            logged = assign(user, exp).name
            if n % 10 == 3:
                logged = "control" if logged == "learning" else "learning"
            if n % 10 == 7:
                logged = ""
            store.append_impression(Impression(impression_id=iid, user=user, ts=1_700_000_000 + n,
                                               items=["a", "b"], positions=[0, 1], propensities=[1.0, 1.0],
                                               policy="x", bundle_version="v1", arm=logged))
            events = [e for e in ("view", "click", "buy") if rng.random() < {"view": .5, "click": .3, "buy": .1}[e]]
            if events:
                store.append([FeedbackEvent(user=user, item="a", event=e, ts=1_700_000_000 + n, impression_id=iid)
                              for e in events])
            if rng.random() < 0.1:  # feedback without an impression: not counted
                store.append([FeedbackEvent(user=user, item="b", event="buy", ts=1_700_000_000 + n)])
            if not logged:
                continue
            t = truth[logged]
            t[0] += 1
            t[1] += any(e in ("click", "buy") for e in events)
            t[2] += "buy" in events
            t[3].add(user)
            u = per_user[logged].setdefault(user, [0, 0])
            u[0] += 1
            u[1] += any(e in ("click", "buy") for e in events)
        rep = report(store, exp, page=97)  # pages smaller than the log
    finally:
        store.close()
    for name, (n, clicks, buys, users) in truth.items():
        a = rep["arms"][name]
        assert (a["impressions"], a["clicks"], a["purchases"], a["users"]) == (n, clicks, buys, len(users))
        assert a["ctr"] == pytest.approx(clicks / n)
        assert a["ctr_ci95"][0] <= a["ctr"] <= a["ctr_ci95"][1]
        by_user = np.array(list(per_user[name].values()))
        assert a["ctr_ci95_users"] == pytest.approx(list(clustered_ratio(by_user[:, 1], by_user[:, 0])[1:]))
    diff = rep["differences"]["control - learning"]["ctr"]
    assert diff["value"] == pytest.approx(rep["arms"]["control"]["ctr"] - rep["arms"]["learning"]["ctr"])
    assert diff["ci95_users"][0] < diff["value"] < diff["ci95_users"][1]
    assert rep["unassigned"] == 60
    assert "learning" in format_report(rep)

    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text("applications:\n  - name: prefmine\n    args:\n      bundle: /x\n      experiment:\n"
                            + "".join(f"        {line}\n" for line in json.dumps(EXP).splitlines()))
    assert load_experiment(serve_config) == exp
    out = subprocess.run([sys.executable, "-m", "prefmine.cli", "experiments", "report", "--feedback", location,
                          "--config", str(serve_config), "--json"], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["arms"] == rep["arms"]
