"""Same-session feedback and A/B arms on the session's served app over gRPC (`server_proc`, which runs a two-arm
experiment whose arms both serve what the bundle serves, tests/conftest.py `session_experiment`): a user's
RecordFeedback changes that user's very next Recommend, Rank and Search without a new bundle; every Recommend
carries its user's arm, stable per user, logged with the impression; the per-arm Prometheus counters count the
impressions, clicks and purchases sent; `prefmine experiments report` on the resulting store prints each arm."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from live_server import API_KEY, METRICS_REPORT_S, METRICS_SETTLE_S, raw_user_ids

from prefmine.experiments import assign, load_experiment
from prefmine.v1 import recommender_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
MD = (("x-api-key", API_KEY),)


@pytest.fixture(scope="module")
def bundle(bundle_path):
    from prefmine.bundle import Bundle

    return Bundle.load(bundle_path)


def recommend(stub, raw: str, k: int = 5) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=raw, k=k), timeout=30, metadata=MD)


def feedback(stub, *events: pb.Event) -> pb.RecordFeedbackResponse:
    return stub.RecordFeedback(pb.RecordFeedbackRequest(events=list(events)), timeout=30, metadata=MD)


def event(raw: str, item: str, kind=pb.EVENT_TYPE_CLICK, impression_id: str = "") -> pb.Event:
    return pb.Event(user_id=raw, item_id=item, type=kind, timestamp=int(time.time()), impression_id=impression_id)


def test_recorded_feedback_changes_the_users_next_answers(stub, bundle):
    """The next call after the acknowledgement, with no pause: a known user's clicked item leaves their slate and
    the slate moves; a user the bundle does not know stops being a cold start in Recommend, Rank and Search, and
    GetUserProfile knows them."""
    known = [raw for raw in raw_user_ids(bundle) if len(bundle.history(bundle.pseudonymise(raw)))]
    raw = known[len(known) // 2]  # not the user test_serve.py records feedback for
    before = recommend(stub, raw)
    clicked = before.items[0].item_id
    assert feedback(stub, event(raw, clicked, impression_id=before.impression_id)).stored == 1
    after = recommend(stub, raw)
    assert clicked not in [it.item_id for it in after.items]
    assert [it.item_id for it in after.items] != [it.item_id for it in before.items]

    newcomer = f"same-session-{uuid.uuid4()}"
    cands = [str(i) for i in bundle.item_ids[:8]]
    query = next(str(t) for t in bundle.titles if len(str(t).split()) >= 2)
    assert recommend(stub, newcomer).cold_start
    assert not stub.GetUserProfile(pb.GetUserProfileRequest(user_id=newcomer), timeout=30, metadata=MD).known
    assert stub.Rank(pb.RankRequest(user_id=newcomer, candidate_item_ids=cands), timeout=30, metadata=MD).cold_start
    assert stub.Search(pb.SearchRequest(user_id=newcomer, query=query, k=5), timeout=30, metadata=MD).cold_start
    feedback(stub, event(newcomer, clicked), event(newcomer, "an-item-no-bundle-knows", pb.EVENT_TYPE_VIEW))
    warm = recommend(stub, newcomer)
    assert not warm.cold_start and clicked not in [it.item_id for it in warm.items] and len(warm.items) == 5
    assert not stub.Rank(pb.RankRequest(user_id=newcomer, candidate_item_ids=cands), timeout=30,
                         metadata=MD).cold_start
    assert not stub.Search(pb.SearchRequest(user_id=newcomer, query=query, k=5), timeout=30, metadata=MD).cold_start
    profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id=newcomer), timeout=30, metadata=MD)
    assert profile.known and profile.history_length == 1  # the click; the view of an unknown item is no history
    assert profile.feedback_counts["click"] == 1 and profile.preference.dim > 0


ARM_COUNTERS = ("ray_prefmine_arm_impressions_total", "ray_prefmine_arm_clicks_total",
                "ray_prefmine_arm_purchases_total")


def scrape(port: int) -> dict:
    import urllib.request

    from serve.metrics import parse_prometheus

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return parse_prometheus(r.read().decode())


def arm_counts(samples: dict, experiment) -> dict[tuple[str, str], float]:
    from serve.metrics import metric_sum

    return {(name, arm.name): metric_sum(samples, name, experiment=experiment.name, arm=arm.name)
            for name in ARM_COUNTERS for arm in experiment.arms}


def wait_for_counts(port: int, experiment, done, timeout_s: float = 90.0) -> dict:
    """Scrape until done(counts) holds (Ray reports every few seconds); the last counts either way."""
    t0, counts = time.monotonic(), {}
    while time.monotonic() - t0 < timeout_s:
        try:
            counts = arm_counts(scrape(port), experiment)
        except OSError:
            counts = {}
        if counts and done(counts):
            break
        time.sleep(METRICS_REPORT_S)
    return counts


def test_arms_are_served_logged_counted_and_reported(server_proc, stub, bundle, tmp_path):
    from prefmine.feedback import open_feedback_store

    experiment = load_experiment(server_proc.experiment)
    # what earlier tests sent has been reported once the counters stop moving for longer than Ray's report interval
    last: list = [None, time.monotonic()]

    def settled(counts):
        if counts != last[0]:
            last[0], last[1] = counts, time.monotonic()
        return time.monotonic() - last[1] >= METRICS_SETTLE_S

    before = wait_for_counts(server_proc.metrics_port, experiment, settled)
    users = [f"arm-user-{uuid.uuid4()}" for _ in range(24)]
    sent: Counter = Counter()
    shown: dict[str, str] = {}
    for n, raw in enumerate(users):
        first, second = recommend(stub, raw, 3), recommend(stub, raw, 3)
        arm = assign(bundle.pseudonymise(raw), experiment).name
        assert first.arm == second.arm == arm  # the user's arm, the same on every call
        shown[first.impression_id], shown[second.impression_id] = arm, arm
        sent["ray_prefmine_arm_impressions_total", arm] += 2
        events = []
        if n % 2 == 0:
            events.append(event(raw, first.items[0].item_id, pb.EVENT_TYPE_CLICK, first.impression_id))
        if n % 3 == 0:
            events.append(event(raw, first.items[1].item_id, pb.EVENT_TYPE_BUY, first.impression_id))
            sent["ray_prefmine_arm_purchases_total", arm] += 1
        events.append(event(raw, first.items[2].item_id, pb.EVENT_TYPE_CLICK))  # names no impression: not counted
        sent["ray_prefmine_arm_clicks_total", arm] += len(events) - 1  # a buy counts as a click too
        feedback(stub, *events)
    assert {arm for _, arm in sent} == {a.name for a in experiment.arms}, "24 users all landed in one arm"

    def delta(counts):
        return {key: counts.get(key, 0.0) - before.get(key, 0.0) for key in counts}

    want = {key: float(sent.get(key, 0)) for key in arm_counts({}, experiment)}
    after = wait_for_counts(server_proc.metrics_port, experiment, lambda c: delta(c) == want)
    assert delta(after) == want

    store = open_feedback_store(server_proc.feedback_db, create=False)
    try:
        logged = store.read_impressions_since(0)
    finally:
        store.close()
    assert {i.impression_id: i.arm for i in logged if i.impression_id in shown} == shown
    assert all(i.arm == assign(i.user, experiment).name for i in logged if i.user)  # what the report recomputes

    out = subprocess.run([sys.executable, "-m", "prefmine.cli", "experiments", "report", "--feedback",
                          str(server_proc.feedback_db), "--config", str(server_proc.experiment), "--json"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    rep = json.loads(out.stdout)["arms"]
    per_arm = Counter(assign(i.user, experiment).name for i in logged)
    assert {name: a["impressions"] for name, a in rep.items()} == {a.name: per_arm[a.name] for a in experiment.arms}
    for name, a in rep.items():
        assert a["clicks"] >= sum(1 for n, u in enumerate(users) if n % 2 == 0 and
                                  assign(bundle.pseudonymise(u), experiment).name == name)
        assert a["ctr_ci95"][0] <= a["ctr"] <= a["ctr_ci95"][1]
    table = subprocess.run([sys.executable, "-m", "prefmine.cli", "experiments", "report", "--feedback",
                            str(server_proc.feedback_db), "--config", str(server_proc.experiment)],
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout
    for arm in experiment.arms:
        line = next(x for x in table.splitlines() if x.startswith(arm.name))
        assert f"{rep[arm.name]['ctr']:.4f}" in line and f"{rep[arm.name]['purchase_rate']:.4f}" in line


def test_an_arm_policy_orders_the_bundles_candidates(bundle_path, bundle):
    """Each policy an arm may name, on the served bundle's own policy (as its ranker replica holds it): a slate of
    distinct candidates, the heuristics in their own order, labelled with what ordered it."""
    from prefmine.serving.policy import SERVABLE_POLICIES, PolicyVersion

    version = PolicyVersion(str(bundle_path))
    rng = np.random.default_rng(0)
    cands = rng.choice(int(bundle.n_items), 30, replace=False)
    scores = rng.normal(size=30)
    for policy in SERVABLE_POLICIES:
        if version.resolve(policy) == "learned":
            continue  # needs the ranker's user state: the live tests above serve it
        slate = version.select(None, cands, scores, 6, policy=policy)
        assert len(set(slate.tolist())) == 6 and set(slate.tolist()) <= set(cands.tolist())
        assert version.label_for(policy) == policy
    assert version.select(None, cands, scores, 6, policy="greedy").tolist() == cands[np.argsort(-scores)][:6].tolist()


def test_a_feedback_log_that_does_not_answer_leaves_the_bundle_history(bundle_path, bundle, tmp_path):
    """The ingress's own class outside Ray (the code a replica runs) on a real SQLite store: a user the bundle does
    not know has the click the log holds in their history; once the store stops answering (its connection
    closed), Rank still answers OK from the bundle's history alone (a cold start here), with a warning logged."""
    import asyncio
    import logging

    from prefmine.feedback import FeedbackEvent
    from serve import app
    from serve.served import BundleRef

    newcomer = f"store-down-{uuid.uuid4()}"
    cands = [str(i) for i in bundle.item_ids[:8]]

    async def run():
        ingress = app.RecommenderIngress.func_or_class(None, None, feedback_db=str(tmp_path / "fb.sqlite"))
        await ingress.reconfigure(BundleRef.of({"bundle": str(bundle_path)}).config())
        ingress.feedback.append([FeedbackEvent(user=bundle.pseudonymise(newcomer), item=cands[3], event="click",
                                               ts=int(time.time()))])
        history = await ingress._history(ingress.served, newcomer)
        assert history.items.tolist() == [bundle.item_index(cands[3])]
        ingress.feedback.close()  # every read now raises
        return await ingress.Rank(pb.RankRequest(user_id=newcomer, candidate_item_ids=cands), None)

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    serve_log = logging.getLogger("ray.serve")  # Serve's logger does not propagate to pytest's capture
    serve_log.addHandler(handler)
    try:
        resp = asyncio.run(run())
    finally:
        serve_log.removeHandler(handler)
    assert resp.cold_start and len(resp.items) == 8
    assert any("feedback log not read" in w for w in warnings)


def test_serve_refuses_an_experiment_it_cannot_run_before_starting_ray(bundle_path, tmp_path, capsys):
    """`prefmine serve --experiment` and the application args (`serve deploy`) check the experiment first: a
    version arm whose bundle is not there, an unknown policy or a file that does not parse is refused naming the
    field, exit status 2 (a version arm that is there is served: tests/test_update_loop.py's live loop)."""
    import yaml

    from serve.app import build_app
    from serve.run import run_serve

    version_arm = {"name": "x", "salt": "s", "arms": [{"name": "a"}, {"name": "v2", "bundle": "/bundles/v2"}]}
    unknown_policy = {"name": "x", "salt": "s", "arms": [{"name": "a", "policy": "random"}]}
    for doc, field in ((version_arm, "experiment.arms[1].bundle"), (unknown_policy, "experiment.arms[0].policy")):
        path = tmp_path / "experiment.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert run_serve(str(bundle_path), 50999, insecure=True, experiment=str(path)) == 2
        assert field in capsys.readouterr().err
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            build_app({"bundle": str(bundle_path), "require_api_key": False, "experiment": doc})
    path.write_text("arms: [unclosed")
    assert run_serve(str(bundle_path), 50999, insecure=True, experiment=str(path)) == 2
    assert "--experiment" in capsys.readouterr().err
