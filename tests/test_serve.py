"""Serving: the generated gRPC code is current, and a real Serve app answers real gRPC calls.

The server is the session's served app (`server_proc` in tests/conftest.py): the `prefmine serve` code path
(serve.run.run_serve, started by tests/live_server.py) in a subprocess with its own local Ray, serving the
session's ``tiny_bundle`` on a free port of 127.0.0.1 with API-key authentication on (a hashed key file) and a
fresh feedback database; the tests call it through a stub generated from protos/prefmine/v1/recommender.proto (the
key added to every call by a client interceptor). That one server serves every RPC test, the auth, health,
reflection (off by default) and deadline tests and the fuzz cases, through Serve's proxy and again through the
direct ingress; it is stopped with SIGTERM after its last test, which must exit 0.
Scopes, rate limits, key reloads and TLS: tests/test_serve_auth.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from live_server import (  # noqa: F401  (re-exported: older imports from test_serve)
    API_KEY,
    METRICS_REPORT_S,
    METRICS_SETTLE_S,
    ROOT,
    SECOND_KEY,
    UNKNOWN_USER,
    ServeProcess,
    keys_file_for,
    raw_user_ids,
    start_server,
)

from prefmine.policy.gate import HEURISTICS
from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc


# -- generated code ------------------------------------------------------------------------------------------
def test_generated_code_is_current():
    r = subprocess.run(
        [sys.executable, "-m", "prefmine.cli.gen_protos", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_gen_protos_check_detects_stale_code(tmp_path):
    from prefmine.cli import gen_protos

    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "prefmine" / "v1", tmp_path / "prefmine" / "v1")
    assert gen_protos.run(check=True, root=tmp_path) == 0
    proto = tmp_path / "protos" / "prefmine" / "v1" / "recommender.proto"
    proto.write_text(
        proto.read_text().replace(
            "message ModelInfoRequest {}", "message ModelInfoRequest { string extra = 1; }"
        )
    )
    assert gen_protos.run(check=True, root=tmp_path) == 1
    assert gen_protos.run(check=False, root=tmp_path) == 0
    assert gen_protos.run(check=True, root=tmp_path) == 0


# -- pure helpers (no Ray) -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "user_id, k, field", [("u", 0, "k"), ("u", 1001, "k"), ("", 5, "user_id"), ("  ", 5, "user_id")]
)
def test_validate_request_names_the_field(user_id, k, field):
    from serve.app import BadRequest, validate_request

    with pytest.raises(BadRequest, match=rf"^{field}\b"):
        validate_request(pb.RecommendRequest(user_id=user_id, k=k))
    validate_request(pb.RecommendRequest(user_id="u", k=1000))


def test_slate_scores_non_increasing():
    from serve.app import slate_scores

    s = slate_scores(np.array([0.2, 0.9, 0.5]))
    assert list(s) == [0.9, 0.5, 0.2]


class _FakePolicy:
    def __init__(self, slate):
        self.slate = slate

    def select(self, state, candidates, scores, k):
        return np.asarray(self.slate)


def _policy_deployment(runtime):
    """What the ranker deployment holds of one bundle version's policy, around a given policy runtime (None: greedy)."""
    from serve.app import _PolicyVersion

    obj = _PolicyVersion(None)
    obj.runtime, obj.kind = runtime, "learned" if runtime else "greedy"
    return obj


def test_policy_slate_is_cleaned_and_padded():
    cands, scores = np.array([10, 11, 12, 13]), np.array([0.1, 0.9, 0.5, 0.7])
    # greedy fallback: the ranker's order
    assert _policy_deployment(None).select(None, cands, scores, 3).tolist() == [11, 13, 12]
    # a learned policy's order is kept
    assert _policy_deployment(_FakePolicy([12, 10, 11])).select(None, cands, scores, 3).tolist() == [
        12,
        10,
        11,
    ]
    # duplicates and non-candidates are dropped and the slate padded from the ranker's order
    assert _policy_deployment(_FakePolicy([12, 12, 99])).select(None, cands, scores, 3).tolist() == [
        12,
        11,
        13,
    ]
    assert _policy_deployment(None).select(None, cands, scores, 10).tolist() == [11, 13, 12, 10]


class _FakePolicyWithPropensities(_FakePolicy):
    def __init__(self, slate, props):
        super().__init__(slate)
        self.props = props

    def select(self, state, candidates, scores, k, return_propensities=False):
        slate = np.asarray(self.slate)
        return (slate, np.asarray(self.props)) if return_propensities else slate


def test_policy_slate_carries_propensities():
    """Each slot's propensity goes with the slate: the policy's own for the items it chose, 1.0 where the choice
    is deterministic (the ranker's order, the ranker's padding after a cleaned policy answer)."""
    cands, scores = np.array([10, 11, 12, 13]), np.array([0.1, 0.9, 0.5, 0.7])
    slate, props = _policy_deployment(None).select(None, cands, scores, 3, return_propensities=True)
    assert slate.tolist() == [11, 13, 12] and props.tolist() == [1.0, 1.0, 1.0]
    learned = _policy_deployment(_FakePolicyWithPropensities([12, 10, 11], [0.9, 0.4, 0.05]))
    slate, props = learned.select(None, cands, scores, 3, return_propensities=True)
    assert slate.tolist() == [12, 10, 11] and props.tolist() == [0.9, 0.4, 0.05]
    cleaned = _policy_deployment(_FakePolicyWithPropensities([12, 12, 99], [0.8, 0.3, 0.2]))
    slate, props = cleaned.select(None, cands, scores, 3, return_propensities=True)
    assert slate.tolist() == [12, 11, 13] and props.tolist() == [0.8, 1.0, 1.0]
    slate, props = learned.select(None, cands[:0], scores[:0], 3, return_propensities=True)
    assert slate.tolist() == [] and props.tolist() == []
    assert learned.label == "learned" and _policy_deployment(None).label == "greedy"


def test_serve_config_matches_app():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve import app

    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    assert config.grpc_options.grpc_servicer_functions == [app.GRPC_SERVICER]
    (application,) = config.applications
    module, attr = application.import_path.split(":")
    assert module == "serve.app" and getattr(app, attr) is app.build_app
    assert set(application.args) <= app.BUILD_ARGS
    names = {d.name for d in application.deployments}
    assert names == {"RecommenderIngress", "RankerDeployment", "EncoderDeployment"}
    assert config.grpc_options.enable_reflection is False  # off unless asked for
    assert application.args["rate_limit"] > 0 and application.args["rate_burst"] >= 1
    env = application.runtime_env["env_vars"]
    from serve.wire import MAX_REQUEST_BYTES

    assert int(env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"]) == MAX_REQUEST_BYTES
    for d in application.deployments:
        assert 0 < d.ray_actor_options.num_cpus <= 0.25
        assert d.max_queued_requests == app.MAX_QUEUED[d.name], d.name  # bounded queues, as in app.py
        auto = d.autoscaling_config  # every deployment scales with load
        assert auto and 1 <= auto["min_replicas"] < auto["max_replicas"], d.name
        assert auto["target_ongoing_requests"] <= d.max_ongoing_requests, d.name
    ranker = next(d for d in application.deployments if d.name == "RankerDeployment")
    assert ranker.max_ongoing_requests >= app.RANKER_BATCH  # a full batch can be in flight
    # the served version is every deployment's user_config, written once (a YAML anchor): a rollout edits one line
    user_configs = [d["user_config"] for d in raw["applications"][0]["deployments"]]
    assert all(u is user_configs[0] for u in user_configs) and set(user_configs[0]) == {"bundle"}


def test_build_app_rejects_bad_args(tmp_path):
    from serve.app import build_app

    with pytest.raises(ValueError, match="unknown application args"):
        build_app({"bundle": str(tmp_path), "bogus": 1})
    with pytest.raises(FileNotFoundError, match="bundle"):
        build_app({"bundle": str(tmp_path)})


def test_run_serve_rejects_a_non_bundle_before_starting_ray(tmp_path, capsys):
    from serve.run import run_serve

    assert run_serve(str(tmp_path), 50999) == 2
    assert "--bundle" in capsys.readouterr().err


def test_validators_name_the_field():
    from serve.validate import BadRequest, validate_feedback, validate_rank

    now = int(time.time())
    ok = pb.Event(user_id="u", item_id="i", type=pb.EVENT_TYPE_RATE, timestamp=now, rating=5)
    validate_feedback(pb.RecordFeedbackRequest(events=[ok]))
    bad = pb.Event(user_id="u", item_id="i", type=pb.EVENT_TYPE_RATE, timestamp=now, rating=6)
    with pytest.raises(BadRequest, match=r"^events\[1\]\.rating "):
        validate_feedback(pb.RecordFeedbackRequest(events=[ok, bad]))
    named = pb.Event(user_id="u", item_id="i", type=pb.EVENT_TYPE_CLICK, timestamp=now,
                     impression_id="0c9a6f5e-1b2d-4c3e-8f70-123456789abc")
    validate_feedback(pb.RecordFeedbackRequest(events=[ok, named]))
    for bad_id in ("x" * 65, "has space", "semi;colon", "under_score", "é"):
        wrong = pb.Event(user_id="u", item_id="i", type=pb.EVENT_TYPE_CLICK, timestamp=now, impression_id=bad_id)
        with pytest.raises(BadRequest, match=r"^events\[1\]\.impression_id must be 1\.\.64 characters"):
            validate_feedback(pb.RecordFeedbackRequest(events=[ok, wrong]))
    with pytest.raises(BadRequest, match=r"^bids\[1\] "):
        validate_rank(pb.RankRequest(user_id="u", candidate_item_ids=["a", "b"], bids=[1, float("inf")]))


# -- a real Serve app ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_deployment_has_a_health_check_that_fails_until_its_model_is_loaded(bundle_path, tmp_path):
    """Each deployment's check_health (what Serve's controller calls every few seconds) raises while the replica
    has nothing loaded and passes once it holds the bundle; the ingress's also fails when its feedback log does
    not answer. The deployments' own classes, outside Ray: the same code a replica runs."""
    import asyncio

    from serve import app
    from serve.served import BundleRef

    config = BundleRef.of({"bundle": str(bundle_path)}).config()

    async def run():
        for dep in (app.RankerDeployment, app.EncoderDeployment):
            replica = dep.func_or_class()
            with pytest.raises(RuntimeError, match="no bundle version is loaded"):
                await replica.check_health()
            await replica.reconfigure(config)
            await replica.check_health()
        ingress = app.RecommenderIngress.func_or_class(None, None, feedback_db=str(tmp_path / "fb.sqlite"))
        with pytest.raises(RuntimeError, match="no bundle version is served"):
            await ingress.check_health()
        await ingress.reconfigure(config)
        await ingress.check_health()
        ingress.feedback.close()
        with pytest.raises(Exception, match="closed"):
            await ingress.check_health()

    asyncio.run(run())


@pytest.mark.slow
def test_ingress_answers_recommend_only_after_the_impression_is_logged(bundle_path, tmp_path):
    """The ingress's own class outside Ray (the code a replica runs) on a real SQLite store: while another
    connection holds the store's write lock, Recommend does not return; once it is released the answer comes back
    with an impression id already in the store; while the store refuses impressions (a SQLite trigger, as a full
    disk would), Recommend returns the empty response and no slate."""
    import asyncio
    import sqlite3

    from prefmine.feedback import open_feedback_store
    from serve import app
    from serve.served import BundleRef

    db = tmp_path / "fb.sqlite"
    config = BundleRef.of({"bundle": str(bundle_path)}).config()
    request = pb.RecommendRequest(user_id=UNKNOWN_USER, k=3)  # cold start: the ingress alone, no ranker hop

    async def run():
        ingress = app.RecommenderIngress.func_or_class(None, None, feedback_db=str(db))
        await ingress.reconfigure(config)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the impression cannot commit
        task = asyncio.ensure_future(ingress.Recommend(request, None))
        await asyncio.sleep(1.5)
        assert not task.done(), "Recommend answered while its impression could not be written"
        blocker.execute("ROLLBACK")
        resp = await asyncio.wait_for(task, 30)
        assert len(resp.items) == 3 and resp.impression_id
        store = open_feedback_store(db, create=False)
        try:
            got = {i.impression_id: i for i in store.read_impressions_since(0)}
        finally:
            store.close()
        assert got[resp.impression_id].items == [it.item_id for it in resp.items]
        assert got[resp.impression_id].policy == "popularity"
        assert [it.propensity for it in resp.items] == [1.0, 1.0, 1.0]

        blocker.execute("CREATE TRIGGER refuse BEFORE INSERT ON impressions BEGIN SELECT RAISE(ABORT, 'full'); END")
        refused = await ingress.Recommend(request, None)
        assert len(refused.items) == 0 and refused.impression_id == ""
        blocker.execute("DROP TRIGGER refuse")
        blocker.close()
        assert (await ingress.Recommend(request, None)).impression_id
        ingress.feedback.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def feedback_db(server_proc) -> Path:
    """The served app's feedback database."""
    return server_proc.feedback_db


@pytest.fixture(scope="module", params=["proxy", "direct"])
def server(request, server_proc) -> str:
    """"127.0.0.1:PORT" of the module's server: every RPC test runs through Serve's proxy and again straight to
    the ingress replica (direct ingress), which must behave the same (keys, validation, limits, codes)."""
    return server_proc.addr if request.param == "proxy" else server_proc.direct_addr


def replicas_started(sp: ServeProcess) -> int:
    """Replicas the Serve controller has started so far (its log lines reach the server's stdout)."""
    return sum(line.count("Adding 1 replica") for line in sp.lines)


class _AddKey(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, key):
        self.key = key

    def intercept_unary_unary(self, continuation, details, request):
        md = list(details.metadata or []) + [("x-api-key", self.key)]
        return continuation(details._replace(metadata=md), request)


@pytest.fixture(scope="module")
def channel(server):
    """A channel whose every call carries the API key."""
    with grpc.insecure_channel(server) as raw:
        yield grpc.intercept_channel(raw, _AddKey(API_KEY))


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def bundle(bundle_path):
    from prefmine.bundle import Bundle

    return Bundle.load(bundle_path)


@pytest.fixture(scope="module")
def known_user(bundle) -> tuple[str, set[str]]:
    """A raw user id that has a history in the bundle, and the raw ids of the items in that history."""
    for raw in raw_user_ids(bundle):
        hist = bundle.history(bundle.pseudonymise(raw))
        if len(hist) > 0:
            return raw, {str(bundle.item_ids[int(i)]) for i in hist}
    pytest.fail("no raw user id of the bundle's data set (PREFMINE_DATA_DIR) has a history in the bundle")


def _assert_invalid(stub, request, field):
    with pytest.raises(grpc.RpcError) as info:
        stub.Recommend(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert "Traceback" not in info.value.details()


@pytest.mark.slow
def test_recommend_known_user(stub, bundle, known_user):
    raw, seen = known_user
    t0 = time.perf_counter()
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=5), timeout=30)
    print(f"Recommend latency {1e3 * (time.perf_counter() - t0):.1f} ms")
    assert not resp.cold_start
    assert resp.bundle_version == bundle.version
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert not set(ids) & seen, "recommended an item already in the user's history"
    scores = [it.score for it in resp.items]
    assert all(np.isfinite(scores))
    assert scores == sorted(scores, reverse=True)
    assert all(bundle.item_index(i) is not None for i in ids)


@pytest.mark.slow
def test_recommend_respects_exclude(stub, known_user):
    raw, _ = known_user
    first = [it.item_id for it in stub.Recommend(pb.RecommendRequest(user_id=raw, k=4), timeout=30).items]
    excluded = first[:2] + ["not-an-item-id"]
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=4, exclude_item_ids=excluded), timeout=30)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 4
    assert not set(ids) & set(excluded)


@pytest.mark.slow
def test_recommend_unknown_user_is_cold_start(stub, bundle):
    resp = stub.Recommend(pb.RecommendRequest(user_id=UNKNOWN_USER, k=3), timeout=30)
    assert resp.cold_start
    assert len(resp.items) == 3
    assert resp.bundle_version == bundle.version
    top = int(np.argmax(bundle.popularity))
    assert resp.items[0].item_id == str(bundle.item_ids[top])
    excl = stub.Recommend(
        pb.RecommendRequest(user_id=UNKNOWN_USER, k=3, exclude_item_ids=[resp.items[0].item_id]), timeout=30
    )
    assert resp.items[0].item_id not in [it.item_id for it in excl.items]


@pytest.mark.slow
@pytest.mark.parametrize(
    "user_id, k, field", [("someone", 0, "k"), ("someone", 1001, "k"), ("", 3, "user_id")]
)
def test_recommend_invalid_argument(stub, user_id, k, field):
    _assert_invalid(stub, pb.RecommendRequest(user_id=user_id, k=k), field)


@pytest.mark.slow
def test_model_info(stub, bundle):
    info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)
    assert info.bundle_version == bundle.version
    assert info.n_items == bundle.n_items
    assert {"encoder", "ranker"} <= {c.name for c in info.components}
    assert info.embedding_dim > 0
    assert info.created == str(bundle.manifest.get("created", ""))


@pytest.mark.slow
def test_model_info_says_which_policy_serves_and_why(stub, bundle_path, bundle, known_user):
    """The bundle's policy gate (policy/gate.json, written by training) as ModelInfo reports it: the policy
    served, the best heuristic, the reason and every compared policy's figures."""
    from prefmine.policy.gate import GateDecision

    info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)
    gate = GateDecision.load(Path(bundle_path) / "policy")
    if gate is None:  # an override bundle made before the gate (PREFMINE_SERVE_TEST_BUNDLE)
        assert not info.HasField("policy_gate")
        return
    got = info.policy_gate
    assert (got.served, got.learned, got.best_heuristic, got.reason) == (
        gate.served, gate.learned or "", gate.best_heuristic, gate.reason)
    assert got.mix_alpha == pytest.approx(gate.alpha)
    assert {(f.policy, m): getattr(f, m) for f in got.figures for m in ("return_mean", "ci95")} == pytest.approx(
        {(k, m): v[m] for k, v in gate.figures.items() for m in ("return_mean", "ci95")})
    policy = next(c for c in info.components if c.name == "policy")
    assert policy.attributes["serving"] == gate.served
    if gate.served == "popularity":  # the served slate is the heuristic's order, deterministic
        pop = np.load(Path(bundle_path) / "policy" / "item_popularity.npy")
        index = {str(i): n for n, i in enumerate(bundle.item_ids)}
        resp = stub.Recommend(pb.RecommendRequest(user_id=known_user[0], k=6), timeout=30)
        counts = [pop[index[it.item_id]] for it in resp.items]
        assert len(counts) == 6 and counts == sorted(counts, reverse=True), counts
        assert [it.propensity for it in resp.items] == [1.0] * 6


@pytest.mark.slow
def test_client_printer(server, known_user, capsys, monkeypatch):
    from serve.client import client_recommend

    monkeypatch.setenv("PREFMINE_API_KEY", API_KEY)
    assert client_recommend(server, known_user[0], 3) == 0
    out = capsys.readouterr().out
    assert "bundle" in out and out.count("\n") >= 4
    assert client_recommend(server, "someone", 0) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


# -- every RPC ---------------------------------------------------------------------------------------------------
def _now() -> int:
    return int(time.time())


@pytest.mark.slow
def test_recommend_recent_events_for_unknown_user(stub, bundle, known_user):
    """A user the bundle has never seen, with a session: ranked from the session, not from popularity."""
    _, seen = known_user
    session = sorted(seen)[:3]
    events = [pb.Event(item_id=i, type=pb.EVENT_TYPE_VIEW, timestamp=_now() - 60 + n) for n, i in enumerate(session)]
    events.append(pb.Event(item_id="not-an-item", type=pb.EVENT_TYPE_CLICK, timestamp=_now()))
    resp = stub.Recommend(pb.RecommendRequest(user_id="session-only-user", k=5, recent_events=events,
                                              placement="cart", explain=True), timeout=30)
    assert not resp.cold_start and resp.placement == "cart"
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 5 and not set(ids) & set(session)
    cold = stub.Recommend(pb.RecommendRequest(user_id="session-only-user", k=5), timeout=30)
    assert cold.cold_start
    assert all(it.reason.startswith("because you interacted with") for it in resp.items), resp
    assert all(it.reason.startswith("popular:") for it in
               stub.Recommend(pb.RecommendRequest(user_id="x", k=2, explain=True), timeout=30).items)
    assert all(not it.reason for it in cold.items)  # no explain, no reasons


@pytest.mark.slow
def _served_history(bundle, feedback_db, raw: str):
    """The history the server scores for `raw`: the bundle's, then the feedback log's newer events of the user."""
    from prefmine.feedback import open_feedback_store
    from prefmine.serving.history import SESSION_EVENTS, History, history_end, with_session

    pseudonym = bundle.pseudonymise(raw)
    stored = History.of(*bundle.history_inputs(pseudonym))
    store = open_feedback_store(feedback_db, create=False)
    try:
        rows = store.recent_for_user(pseudonym, SESSION_EVENTS, history_end(stored))
    finally:
        store.close()
    return with_session(stored, rows, (), bundle.item_index)


def test_recommend_serves_the_evaluated_lists(stub, bundle, bundle_path, magazine5, known_user, feedback_db):
    """Recommend over gRPC answers a sample of test users exactly as `prefmine evaluate`'s `served` row does
    (prefmine.evaluate.served_lists): each user's evaluation history (train + valid) sent as recent_events with
    its event types and timestamps, slate of 20; and a known user from the bundle's stored history (items, types
    and times) and the feedback log's newer events as the same library functions rank it."""
    from prefmine.data.dataset import EVENTS, load_dataset
    from prefmine.evaluate import served_lists
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.serving.history import History

    ds = load_dataset(magazine5)
    assert ds.manifest.get("data_hash") == bundle.manifest.get("data_hash"), "the bundle is not of this data set"
    users = np.sort(np.random.default_rng(0).choice(ds.eval_users("test"), 12, replace=False))
    hists = [History.of(ds.history(u, "test"), ds.history_events(u, "test"), ds.history_times(u, "test"))
             for u in users]
    runtime = RankerRuntime(bundle_path)
    want = served_lists(bundle_path, runtime, hists, 20)
    for u, h, row in zip(users, hists, want):
        events = [pb.Event(item_id=str(ds.item_ids[i]), type=pb.EventType.Value(f"EVENT_TYPE_{EVENTS[e].upper()}"),
                           timestamp=int(t), rating=5.0 if EVENTS[e] == "rate" else 0.0)
                  for i, e, t in zip(h.items, h.events, h.times)]
        resp = stub.Recommend(pb.RecommendRequest(user_id=f"evaluated-user-{u}", k=20, recent_events=events),
                              timeout=30)
        assert not resp.cold_start
        assert [it.item_id for it in resp.items] == [str(ds.item_ids[i]) for i in row if i >= 0], f"user {u}"
    # the known user: the bundle's history plus what the feedback log holds for them after it (the module's
    # other tests record feedback for this user, through the proxy before the direct ingress runs this)
    raw, _ = known_user
    stored = _served_history(bundle, feedback_db, raw)
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=20), timeout=30)
    assert [it.item_id for it in resp.items] == [str(bundle.item_ids[i]) for i in
                                                 served_lists(bundle_path, runtime, [stored], 20)[0] if i >= 0]


@pytest.mark.slow
def test_recommend_explain_names_a_history_item(stub, bundle, known_user, feedback_db):
    raw, _ = known_user
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=3, explain=True), timeout=30)
    # the history served: the bundle's and the feedback the module's other tests recorded for this user
    titles = {str(bundle.titles[int(i)])[:40] for i in _served_history(bundle, feedback_db, raw).items}
    for it in resp.items:
        assert any(t and t in it.reason for t in titles), it.reason


@pytest.mark.slow
def test_search_matches_text_and_is_personalised(stub, bundle, bundle_path, known_user):
    """The cold order is what the same bundle's parts, run here in-process, give: with a lexical index
    (hybrid), the bundle's Searcher over the encoder's item embeddings (BM25 and cosine fused); without one, the
    catalogue's item embeddings ranked by cosine to the query. A known user's order mixes in relevance."""
    from prefmine.search.bundle import has_index, load_bundle_searcher
    from prefmine.text.runtime import EncoderRuntime

    raw, _ = known_user
    title = next(str(t) for t in bundle.titles if len(str(t).split()) >= 2)
    cold = stub.Search(pb.SearchRequest(user_id=UNKNOWN_USER, query=title, k=10), timeout=30)
    assert cold.cold_start and len(cold.results) == 10
    enc = EncoderRuntime(bundle_path)
    q = enc.embed([title])[0]
    if has_index(bundle_path):
        assert cold.retrieval == "hybrid" and cold.facets
        searcher = load_bundle_searcher(bundle_path, enc.item_embeddings)
        hit = searcher.finish(searcher.retrieve(title, q, 10), 10)
        expected, sims = hit.idx, hit.score
        assert [r.lexical_score for r in cold.results] == pytest.approx(hit.lexical.tolist(), abs=1e-4)
        assert [r.text_score for r in cold.results] == pytest.approx(hit.dense.tolist(), abs=1e-4)
        top_scores = [r.score for r in cold.results[:3]]
    else:
        assert cold.retrieval == "dense" and not cold.facets
        v = enc.item_embeddings / np.linalg.norm(enc.item_embeddings, axis=1, keepdims=True)
        all_sims = v @ (q / np.linalg.norm(q))
        expected = np.argsort(-all_sims, kind="stable")[:10]
        sims = all_sims[expected]
        assert [r.text_score for r in cold.results] == pytest.approx(sims.tolist(), abs=1e-4)
        top_scores = [r.text_score for r in cold.results[:3]]
    top = [r.item_id for r in cold.results]
    assert top[:3] == [str(bundle.item_ids[i]) for i in expected[:3]] or \
        np.allclose(sorted(sims[:3]), sorted(top_scores), atol=1e-4)
    warm = stub.Search(pb.SearchRequest(user_id=raw, query=title, k=10), timeout=30)
    assert not warm.cold_start and len(warm.results) == 10
    scores = [r.score for r in warm.results]
    assert scores == sorted(scores, reverse=True)
    assert any(r.relevance != 0 for r in warm.results)


@pytest.mark.slow
def test_rank_by_expected_value(stub, bundle, known_user):
    raw, _ = known_user
    cands = [str(i) for i in bundle.item_ids[:6]] + ["unknown-a", str(bundle.item_ids[0])]
    bids = [1.0, 2.0, 0.5, 3.0, 0.0, 1.5, 9.0, 7.0]
    resp = stub.Rank(pb.RankRequest(user_id=raw, candidate_item_ids=cands, bids=bids), timeout=30)
    assert list(resp.unknown_item_ids) == ["unknown-a"] and not resp.cold_start
    assert [it.item_id for it in resp.items if it.item_id == cands[0]] == [cands[0]]  # duplicate ranked once
    assert len(resp.items) == 6
    ev = [it.expected_value for it in resp.items]
    assert ev == sorted(ev, reverse=True)
    for it in resp.items:
        assert 0 < it.click_probability < 1
        assert it.bid == bids[cands.index(it.item_id)]
        assert it.expected_value == pytest.approx(it.click_probability * it.bid)
    _assert_gsp_prices(resp.items)
    # probabilities are the ranker's: without bids the order is by probability alone
    plain = stub.Rank(pb.RankRequest(user_id=raw, candidate_item_ids=cands[:6]), timeout=30)
    probs = [it.click_probability for it in plain.items]
    assert probs == sorted(probs, reverse=True) and all(it.bid == 1.0 for it in plain.items)
    cold = stub.Rank(pb.RankRequest(user_id=UNKNOWN_USER, candidate_item_ids=cands[:6]), timeout=30)
    share = bundle.popularity / bundle.popularity.sum()
    for it in cold.items:
        assert it.click_probability == pytest.approx(share[bundle.item_index(it.item_id)])


def _assert_gsp_prices(items) -> None:
    """Each item that can win pays the next winner's expected value / its own click probability, at most its bid;
    the last winner pays 0 (no reserve), an item with a zero bid or probability pays 0."""
    winners = [it for it in items if it.bid > 0 and it.click_probability > 0]
    assert [it.item_id for it in items[: len(winners)]] == [it.item_id for it in winners]  # they lead the order
    for it, nxt in zip(winners, winners[1:] + [None]):
        expect = 0.0 if nxt is None else min(it.bid, nxt.expected_value / it.click_probability)
        assert it.price == pytest.approx(expect, rel=1e-9) and 0 <= it.price <= it.bid
    assert all(it.price == 0 for it in items[len(winners):])


@pytest.mark.slow
def test_rank_returns_gsp_prices_from_the_ingress_outside_ray(bundle_path, bundle, tmp_path):
    """The ingress's own class outside Ray (the code a replica runs), cold start (popularity shares, no ranker
    hop): Rank answers each winner's second price per click beside the expected-value order."""
    import asyncio

    from serve import app
    from serve.served import BundleRef

    cands = [str(i) for i in bundle.item_ids[:8]]
    bids = [1.0, 2.0, 0.5, 3.0, 0.0, 1.5, 0.7, 2.5]

    async def run():
        ingress = app.RecommenderIngress.func_or_class(None, None, feedback_db=str(tmp_path / "fb.sqlite"))
        await ingress.reconfigure(BundleRef.of({"bundle": str(bundle_path)}).config())
        try:
            return await ingress.Rank(pb.RankRequest(user_id=UNKNOWN_USER, candidate_item_ids=cands, bids=bids),
                                      None)
        finally:
            ingress.feedback.close()

    resp = asyncio.run(run())
    assert resp.cold_start and len(resp.items) == 8
    assert sum(it.price > 0 for it in resp.items) >= 2
    _assert_gsp_prices(resp.items)


@pytest.mark.slow
def test_similar_items(stub, bundle):
    item = str(bundle.item_ids[int(np.argmax(bundle.popularity))])
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=5), timeout=30)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 5 and item not in ids and len(set(ids)) == 5
    sims = [it.similarity for it in resp.items]
    assert sims == sorted(sims, reverse=True) and all(-1.001 <= s <= 1.001 for s in sims)
    with pytest.raises(grpc.RpcError) as info:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item", k=5), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "item_id" in info.value.details()


@pytest.mark.slow
def test_user_profile_and_feedback(stub, bundle, known_user, feedback_db):
    from prefmine.feedback import FeedbackLog

    raw, seen = known_user
    prof = stub.GetUserProfile(pb.GetUserProfileRequest(user_id=raw), timeout=30)
    hist = bundle.history(bundle.pseudonymise(raw))
    # the bundle's history, and the interactions an earlier test (the other parametrisation) recorded since
    assert prof.known and prof.history_length >= len(hist)
    cats = {c for i in hist for c in (bundle.items["categories"].iloc[int(i)] if bundle.items["categories"].iloc[int(i)] is not None else [])}
    assert prof.top_categories and {t.name for t in prof.top_categories} <= cats
    assert prof.keywords and prof.preference.dim > 0 and prof.preference.norm > 0
    assert len(prof.preference.top_item_ids) == 5
    before = dict(prof.feedback_counts)

    item = sorted(seen)[0]
    events = [pb.Event(user_id=raw, item_id=item, type=pb.EVENT_TYPE_CLICK, timestamp=_now()),
              pb.Event(user_id=raw, item_id=item, type=pb.EVENT_TYPE_RATE, timestamp=_now(), rating=4),
              pb.Event(user_id=raw, item_id="brand-new-item", type=pb.EVENT_TYPE_VIEW, timestamp=_now())]
    ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=events), timeout=30)
    assert ack.stored == 3 and ack.last_id > 0
    # acknowledged = readable by another process (the policy update job), pseudonymised
    log = FeedbackLog(feedback_db, create=False)
    rows = [r for r in log.read_since(0) if r[0] > ack.last_id - 3]
    log.close()
    assert [(r[2], r[3], r[5]) for r in rows] == [(item, "click", None), (item, "rate", 4.0),
                                                  ("brand-new-item", "view", None)]
    assert {r[1] for r in rows} == {bundle.pseudonymise(raw)} and raw not in {r[1] for r in rows}
    after = stub.GetUserProfile(pb.GetUserProfileRequest(user_id=raw), timeout=30)
    for name in ("click", "rate", "view"):
        assert after.feedback_counts[name] == before.get(name, 0) + 1
    # the click and the rating extend the history the profile reads; a view of an unknown item does not
    assert after.history_length == prof.history_length + 2


# -- impressions ------------------------------------------------------------------------------------------------
def _stored_impressions(feedback_db) -> dict:
    from prefmine.feedback import open_feedback_store

    store = open_feedback_store(feedback_db, create=False)
    try:
        return {i.impression_id: i for i in store.read_impressions_since(0)}
    finally:
        store.close()


@pytest.mark.slow
def test_recommend_logs_its_impression_before_answering(stub, bundle, known_user, feedback_db):
    """Every answer carries an impression id, and the store holds that impression (pseudonym, items in answer
    order, positions, propensities, bundle version) when the client gets the answer: read right after it."""
    import uuid

    raw, _ = known_user
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=5), timeout=30)
    got = _stored_impressions(feedback_db)  # another connection, right after the answer returned
    assert uuid.UUID(resp.impression_id).version == 4
    imp = got[resp.impression_id]
    assert imp.items == [it.item_id for it in resp.items] and len(imp.items) == 5
    assert imp.positions == [0, 1, 2, 3, 4]
    assert imp.propensities == pytest.approx([it.propensity for it in resp.items])
    assert all(0 < p <= 1 for p in imp.propensities)
    if "epsilon" not in imp.policy:  # deterministic serving: every shown item had propensity 1
        assert imp.propensities == [1.0] * 5
    assert imp.policy.split()[0] in ("learned", *HEURISTICS)  # what the bundle's policy gate chose
    assert imp.bundle_version == resp.bundle_version == bundle.version
    assert imp.user == bundle.pseudonymise(raw) and raw not in {imp.user, imp.policy}
    assert abs(imp.ts - time.time()) < 120

    cold = stub.Recommend(pb.RecommendRequest(user_id=UNKNOWN_USER, k=3), timeout=30)
    cold_imp = _stored_impressions(feedback_db)[cold.impression_id]
    assert cold_imp.policy == "popularity" and cold_imp.propensities == [1.0, 1.0, 1.0]
    assert cold_imp.items == [it.item_id for it in cold.items]
    assert cold.impression_id != resp.impression_id


@pytest.mark.slow
def test_feedback_naming_an_impression_joins_to_it(stub, known_user, feedback_db):
    from prefmine.feedback import open_feedback_store

    raw, _ = known_user
    resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=3), timeout=30)
    clicked = resp.items[1].item_id
    events = [pb.Event(user_id=raw, item_id=clicked, type=pb.EVENT_TYPE_CLICK, timestamp=_now(),
                       impression_id=resp.impression_id),
              pb.Event(user_id=raw, item_id=clicked, type=pb.EVENT_TYPE_VIEW, timestamp=_now())]
    ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=events), timeout=30)
    store = open_feedback_store(feedback_db, create=False)
    try:
        joined = store.feedback_for_impressions([resp.impression_id])[resp.impression_id]
    finally:
        store.close()
    assert [(r[0], r[2], r[3]) for r in joined] == [(ack.last_id - 1, clicked, "click")]
    shown = _stored_impressions(feedback_db)[resp.impression_id]
    assert shown.positions[shown.items.index(clicked)] == 1  # the click's slot and its propensity are known

    bad = pb.Event(user_id=raw, item_id=clicked, type=pb.EVENT_TYPE_CLICK, timestamp=_now(),
                   impression_id="not an id")
    with pytest.raises(grpc.RpcError) as info:
        stub.RecordFeedback(pb.RecordFeedbackRequest(events=[events[1], bad]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("events[1].impression_id")


@pytest.mark.slow
def test_recommend_waits_for_the_impression_log_and_is_unavailable_without_it(stub, known_user, feedback_db):
    """Against the live server's SQLite store: while the test holds the store's write lock, Recommend does not
    answer; released, it answers with a logged impression. While the store refuses impressions (a trigger, as a
    full disk would), Recommend answers UNAVAILABLE, and answers again once the store takes them."""
    import sqlite3

    raw, _ = known_user
    request = pb.RecommendRequest(user_id=raw, k=3)
    stub.Recommend(request, timeout=30)  # warm
    blocker = sqlite3.connect(feedback_db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        fut = stub.Recommend.future(request, timeout=25)
        time.sleep(1.5)
        assert not fut.done(), "Recommend answered while its impression could not be written"
        blocker.execute("ROLLBACK")
        resp = fut.result()
        assert resp.impression_id in _stored_impressions(feedback_db)

        blocker.execute("CREATE TRIGGER refuse_impressions BEFORE INSERT ON impressions "
                        "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "impression" in info.value.details() and "Traceback" not in info.value.details()
    finally:
        blocker.execute("DROP TRIGGER IF EXISTS refuse_impressions")
        blocker.close()
    assert stub.Recommend(request, timeout=30).impression_id


# -- health, reflection, auth, deadlines ---------------------------------------------------------------------
@pytest.mark.slow
def test_health_check_needs_no_key(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "prefmine.v1.Recommender"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_server_reflection_is_off_by_default(server):
    """Without --reflection nobody can list the API (tests/test_serve_auth.py turns it on and lists it)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server) as ch:
        with pytest.raises(grpc.RpcError) as info:
            ProtoReflectionDescriptorDatabase(ch).get_services()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


ALL_RPCS = [
    ("Recommend", pb.RecommendRequest(user_id="u", k=1)),
    ("Search", pb.SearchRequest(user_id="u", query="news", k=1)),
    ("Rank", pb.RankRequest(user_id="u", candidate_item_ids=["x"])),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="x", k=1)),
    ("GetUserProfile", pb.GetUserProfileRequest(user_id="u")),
    ("RecordFeedback", pb.RecordFeedbackRequest(events=[pb.Event(user_id="u", item_id="i", type=1,
                                                                 timestamp=1_600_000_000)])),
    ("ModelInfo", pb.ModelInfoRequest()),
    ("WriteCatalog", pb.WriteCatalogRequest(rows=[pb.CatalogRow(item_id="x", retire=True)])),
    ("WriteCampaigns", pb.WriteCampaignsRequest(rows=[pb.CampaignRow(campaign_id="x", daily_budget=1.0)])),
]


@pytest.mark.slow
@pytest.mark.parametrize("metadata", [(), (("x-api-key", "wrong-key-0123456789"),), (("authorization", "Bearer no"),)],
                         ids=["none", "wrong", "wrong-bearer"])
def test_every_rpc_needs_the_api_key(server, feedback_db, metadata):
    from prefmine.feedback import FeedbackLog

    log = FeedbackLog(feedback_db, create=False)
    n = log.count()
    with grpc.insecure_channel(server) as ch:
        raw = pb_grpc.RecommenderStub(ch)
        for rpc, request in ALL_RPCS:
            with pytest.raises(grpc.RpcError) as info:
                getattr(raw, rpc)(request, timeout=30, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, info.value)
            assert "API key" in info.value.details()
        ok = raw.ModelInfo(pb.ModelInfoRequest(), timeout=30,
                           metadata=(("authorization", f"Bearer {SECOND_KEY}"),))
        assert ok.n_items > 0
    assert log.count() == n  # nothing stored for an unauthenticated caller
    log.close()


@pytest.mark.slow
def test_deadline_is_respected(stub, known_user):
    """16 concurrent calls with a 50 ms deadline: each ends by its deadline (plus scheduling slack), as OK or
    DEADLINE_EXCEEDED and nothing else, and the server answers normally afterwards."""
    request = pb.SearchRequest(user_id=known_user[0], query="a long query about magazines " * 10, k=1000)
    t0 = time.monotonic()
    futures = [stub.Search.future(request, timeout=0.05) for _ in range(16)]
    codes = []
    for f in futures:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    assert time.monotonic() - t0 < 2.0
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
    assert len(stub.Search(request, timeout=60).results) > 0


# -- fuzz: malformed values on every RPC -------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    """A protobuf base-128 varint (a negative value as its 64-bit two's complement, as protobuf writes it)."""
    out, v = [], value & (2**64 - 1)
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, sub-messages) with raw bytes: lets the test send what a
    generated client refuses to (invalid UTF-8)."""
    return bytes([(field << 3) | 2]) + _varint(len(payload)) + payload


def _varint_field(field: int, value: int) -> bytes:
    return bytes([field << 3]) + _varint(value)


BAD_UTF8 = b"caf\xe9\xff"
NOW = int(time.time())
BIG = "x" * (1 << 20)
GOOD_EVENT = dict(user_id="fuzz-user", item_id="fuzz-item", type=pb.EVENT_TYPE_VIEW, timestamp=NOW)


def _ev(**kw):
    return pb.Event(**{**GOOD_EVENT, **kw})


INV, RES = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
# (case id, rpc, request message or raw bytes, expected code, text the details must contain)
FUZZ = [
    ("rec-k-negative", "Recommend", pb.RecommendRequest(user_id="u", k=-5), INV, "k must be"),
    ("rec-k-huge", "Recommend", pb.RecommendRequest(user_id="u", k=2**31 - 1), INV, "k must be"),
    ("rec-user-empty", "Recommend", pb.RecommendRequest(user_id="", k=3), INV, "user_id"),
    ("rec-user-1mb", "Recommend", pb.RecommendRequest(user_id=BIG, k=3), INV, "user_id is 1048576 bytes"),
    ("rec-user-utf8", "Recommend", _ld(1, BAD_UTF8) + _varint_field(2, 3), INV, "user_id is not valid UTF-8"),
    ("rec-exclude-utf8", "Recommend", _ld(1, b"u") + _varint_field(2, 3) + _ld(3, b"ok") + _ld(3, BAD_UTF8), INV,
     "exclude_item_ids[1] is not valid UTF-8"),
    ("rec-exclude-100k", "Recommend", pb.RecommendRequest(user_id="u", k=3, exclude_item_ids=["i"] * 100_000), INV,
     "exclude_item_ids has 100000"),
    ("rec-event-type", "Recommend", pb.RecommendRequest(user_id="u", k=3, recent_events=[_ev(type=42)]), INV,
     "recent_events[0].type"),
    ("rec-event-future", "Recommend", pb.RecommendRequest(user_id="u", k=3, recent_events=[_ev(timestamp=2**62)]),
     INV, "recent_events[0].timestamp"),
    ("rec-placement-big", "Recommend", pb.RecommendRequest(user_id="u", k=3, placement="p" * 1000), INV,
     "placement"),
    ("rec-garbage", "Recommend", b"\x0a\x7f\x01", INV, "not a valid RecommendRequest"),
    # refused by Serve's gRPC server itself (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE = 4 MiB), before anything parses it
    ("rec-5mb", "Recommend", _ld(3, b"y" * (5 << 20)), RES, "larger than max"),
    ("search-query-empty", "Search", pb.SearchRequest(user_id="u", query="   ", k=3), INV, "query"),
    ("search-query-1mb", "Search", pb.SearchRequest(user_id="u", query=BIG, k=3), INV, "query is 1048576 bytes"),
    ("search-query-utf8", "Search", _ld(1, b"u") + _ld(2, BAD_UTF8) + _varint_field(3, 3), INV,
     "query is not valid UTF-8"),
    ("search-k-zero", "Search", pb.SearchRequest(user_id="u", query="q", k=0), INV, "k must be"),
    ("search-user-empty", "Search", pb.SearchRequest(user_id="", query="q", k=3), INV, "user_id"),
    ("rank-100k", "Rank", pb.RankRequest(user_id="u", candidate_item_ids=[f"i{n}" for n in range(100_000)]), INV,
     "candidate_item_ids has 100000"),
    ("rank-empty", "Rank", pb.RankRequest(user_id="u"), INV, "candidate_item_ids must have at least 1"),
    ("rank-empty-id", "Rank", pb.RankRequest(user_id="u", candidate_item_ids=["a", ""]), INV,
     "candidate_item_ids[1]"),
    ("rank-id-utf8", "Rank", _ld(1, b"u") + _ld(2, b"a") + _ld(2, BAD_UTF8), INV,
     "candidate_item_ids[1] is not valid UTF-8"),
    ("rank-bids-length", "Rank", pb.RankRequest(user_id="u", candidate_item_ids=["a", "b"], bids=[1.0]), INV,
     "bids has 1"),
    ("rank-bid-negative", "Rank", pb.RankRequest(user_id="u", candidate_item_ids=["a"], bids=[-1.0]), INV,
     "bids[0]"),
    ("rank-bid-nan", "Rank", pb.RankRequest(user_id="u", candidate_item_ids=["a"], bids=[float("nan")]), INV,
     "bids[0]"),
    ("similar-k-negative", "SimilarItems", pb.SimilarItemsRequest(item_id="a", k=-1), INV, "k must be"),
    ("similar-item-empty", "SimilarItems", pb.SimilarItemsRequest(item_id="", k=3), INV, "item_id"),
    ("similar-item-1mb", "SimilarItems", pb.SimilarItemsRequest(item_id=BIG, k=3), INV, "item_id is 1048576"),
    ("similar-item-utf8", "SimilarItems", _ld(1, BAD_UTF8) + _varint_field(2, 3), INV,
     "item_id is not valid UTF-8"),
    ("profile-user-empty", "GetUserProfile", pb.GetUserProfileRequest(user_id=""), INV, "user_id"),
    ("profile-user-utf8", "GetUserProfile", _ld(1, BAD_UTF8), INV, "user_id is not valid UTF-8"),
    ("fb-none", "RecordFeedback", pb.RecordFeedbackRequest(), INV, "events must have at least 1"),
    ("fb-type-unknown", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(), _ev(type=99)]), INV,
     "events[1].type"),
    ("fb-type-unspecified", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(type=0)]), INV,
     "events[0].type"),
    ("fb-future", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(), _ev(timestamp=NOW + 10 * 86400)]), INV,
     "events[1].timestamp"),
    ("fb-negative-ts", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(timestamp=-1)]), INV,
     "events[0].timestamp"),
    ("fb-rating-missing", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(type=pb.EVENT_TYPE_RATE)]), INV,
     "events[0].rating"),
    ("fb-rating-nan", "RecordFeedback",
     pb.RecordFeedbackRequest(events=[_ev(type=pb.EVENT_TYPE_RATE, rating=float("nan"))]), INV, "events[0].rating"),
    ("fb-user-empty", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(user_id="")]), INV,
     "events[0].user_id"),
    ("fb-item-1mb", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev(item_id=BIG)]), INV,
     "events[0].item_id is 1048576"),
    ("fb-item-utf8", "RecordFeedback",
     _ld(1, pb.Event(**GOOD_EVENT).SerializeToString()) + _ld(1, _ld(1, b"u") + _ld(2, BAD_UTF8)), INV,
     "events[1].item_id is not valid UTF-8"),
    ("fb-too-many", "RecordFeedback", pb.RecordFeedbackRequest(events=[_ev()] * 1001), INV, "events has 1001"),
    ("modelinfo-garbage", "ModelInfo", b"\xff\xff\xff", INV, "not a valid ModelInfoRequest"),
]

RESPONSES = {"Recommend": pb.RecommendResponse, "Search": pb.SearchResponse, "Rank": pb.RankResponse,
             "SimilarItems": pb.SimilarItemsResponse, "GetUserProfile": pb.UserProfile,
             "RecordFeedback": pb.RecordFeedbackResponse, "ModelInfo": pb.ModelInfoResponse}


@pytest.fixture(scope="module")
def stored_before_fuzz(stub, feedback_db, server_proc):
    """Acknowledged feedback (and replicas started) before the fuzz cases run: none of it may be lost or
    changed by them, and no replica may have to be restarted."""
    from prefmine.feedback import FeedbackLog

    server_proc.replicas_before_fuzz = replicas_started(server_proc)
    assert server_proc.replicas_before_fuzz >= 3  # one a deployment: ingress, ranker, encoder
    ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=[_ev(item_id=f"before-fuzz-{n}") for n in range(5)]),
                              timeout=30)
    assert ack.stored == 5
    log = FeedbackLog(feedback_db, create=False)
    rows = log.read_since(0)
    log.close()
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("case, rpc, request_, code, text", FUZZ, ids=[c[0] for c in FUZZ])
def test_fuzz(channel, stored_before_fuzz, case, rpc, request_, code, text):
    call = channel.unary_unary(f"/prefmine.v1.Recommender/{rpc}", request_serializer=None,
                               response_deserializer=RESPONSES[rpc].FromString)
    raw = request_ if isinstance(request_, bytes) else request_.SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        call(raw, timeout=60)
    assert info.value.code() == code, (case, info.value.code(), info.value.details())
    assert text in info.value.details(), (case, info.value.details())
    assert "Traceback" not in info.value.details() and len(info.value.details()) < 500


@pytest.mark.slow
def test_after_fuzz_no_feedback_lost_and_replicas_alive(stub, server_proc, feedback_db, stored_before_fuzz):
    """Runs after test_fuzz (file order): the same replicas still answer, and the log holds exactly what was
    acknowledged before (no rejected event was stored, nothing acknowledged went missing)."""
    from prefmine.feedback import FeedbackLog

    time.sleep(2)  # a replica that died would be replaced within the controller's next loop
    assert replicas_started(server_proc) == server_proc.replicas_before_fuzz, "a replica was restarted"
    assert stub.ModelInfo(pb.ModelInfoRequest(), timeout=30).n_items > 0
    assert len(stub.Recommend(pb.RecommendRequest(user_id=UNKNOWN_USER, k=2), timeout=30).items) == 2
    log = FeedbackLog(feedback_db, create=False)
    rows = log.read_since(0)
    log.close()
    assert rows == stored_before_fuzz
    assert not [r for r in rows if r[2] == "fuzz-item"]


# -- Prometheus metrics ----------------------------------------------------------------------------------------
def _scrape(port: int) -> dict:
    import urllib.request

    from serve.metrics import parse_prometheus

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return parse_prometheus(r.read().decode())


def _wait_for_metrics(port: int, done, timeout_s: float = 90.0) -> dict:
    """Scrape until done(samples) holds (Ray reports every few seconds); the last samples either way."""
    t0, samples = time.monotonic(), {}
    while time.monotonic() - t0 < timeout_s:
        try:
            samples = _scrape(port)
        except OSError:
            samples = {}
        if done(samples):
            break
        time.sleep(METRICS_REPORT_S)
    return samples


def test_parse_prometheus_and_metric_sum():
    from serve.metrics import metric_sum, parse_prometheus

    text = ('# HELP x_total calls\n# TYPE x_total counter\n'
            'x_total{rpc="Recommend",code="OK",replica="a"} 3.0\n'
            'x_total{rpc="Recommend",code="OK",replica="b"} 2\n'
            'x_total{rpc="Search",code="NOT_FOUND"} 1\n'
            'y_bucket{le="+Inf"} 7\nnot a sample line\n')
    s = parse_prometheus(text)
    assert metric_sum(s, "x_total", rpc="Recommend", code="OK") == 5.0
    assert metric_sum(s, "x_total") == 6.0
    assert metric_sum(s, "x_total", code="INTERNAL") == 0.0
    assert metric_sum(s, "y_bucket", le="+Inf") == 7.0


@pytest.mark.slow
def test_prometheus_metrics_count_calls_codes_latency_version_and_feedback(server_proc, stub, bundle):
    """The ingress's own metrics reach Ray's Prometheus endpoint: calls by RPC and status code, errors, the
    latency histogram, the served bundle version and committed feedback events, each moving by exactly what this
    test sent (the module's other tests run before or after, never during)."""
    from serve.metrics import metric_sum

    port = server_proc.metrics_port
    calls = "ray_prefmine_grpc_requests_total"
    errors = "ray_prefmine_grpc_errors_total"
    latency = "ray_prefmine_grpc_request_latency_ms_count"
    feedback = "ray_prefmine_feedback_events_total"

    # everything up to now has been reported once every call is in the latency histogram too and the counts have
    # not moved for a few of Ray's metrics report intervals (live_server.METRICS_SETTLE_S; counters and histograms are
    # exported separately, so two equal scrapes a moment apart prove nothing)
    last: list = [None, 0.0]

    def settled(s):
        now = (metric_sum(s, calls), metric_sum(s, latency), metric_sum(s, feedback))
        if now != last[0]:
            last[0], last[1] = now, time.monotonic()
        return now[0] > 0 and now[0] == now[1] and time.monotonic() - last[1] >= METRICS_SETTLE_S

    before = _wait_for_metrics(port, settled)
    assert metric_sum(before, calls) > 0, "no prefmine metrics on Ray's Prometheus endpoint"
    for _ in range(3):
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=str(bundle.item_ids[0]), k=3), timeout=30)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as info:
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item-for-metrics", k=3), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stub.RecordFeedback(pb.RecordFeedbackRequest(events=[_ev(item_id="metrics-item", type=pb.EVENT_TYPE_CART),
                                                        _ev(item_id="metrics-item", type=pb.EVENT_TYPE_CART),
                                                        _ev(item_id="metrics-item", type=pb.EVENT_TYPE_BUY)]),
                        timeout=30)

    def delta(s, name, **labels):
        return metric_sum(s, name, **labels) - metric_sum(before, name, **labels)

    after = _wait_for_metrics(port, lambda s: delta(s, feedback, event="buy") >= 1
                              and delta(s, calls, rpc="SimilarItems") >= 5)
    assert delta(after, calls, rpc="SimilarItems", code="OK") == 3
    assert delta(after, calls, rpc="SimilarItems", code="NOT_FOUND") == 2
    assert delta(after, errors, rpc="SimilarItems", code="NOT_FOUND") == 2
    assert delta(after, errors, rpc="SimilarItems", code="OK") == 0
    assert delta(after, latency, rpc="SimilarItems") == 5
    assert delta(after, "ray_prefmine_grpc_request_latency_ms_bucket", rpc="SimilarItems", le="+Inf") == 5
    assert delta(after, feedback, event="cart") == 2 and delta(after, feedback, event="buy") == 1
    assert delta(after, calls, rpc="RecordFeedback", code="OK") == 1
    assert metric_sum(after, "ray_prefmine_model_bundle", bundle_version=str(bundle.version)) >= 1
    tagged = [lab for (n, lab) in after if n == calls]
    assert all(dict(lab).get("deployment") == "RecommenderIngress" for lab in tagged)


@pytest.mark.slow
def test_concurrent_recommends_are_batched_and_answer_as_alone(server_proc, stub, bundle):
    """16 users at once: the ranker's @serve.batch groups them (Serve's own batch-size histogram shows batches
    of more than one), and every user gets exactly the slate a lone request gets."""
    from concurrent.futures import ThreadPoolExecutor

    from serve.metrics import metric_sum

    users = []
    for raw in raw_user_ids(bundle):
        if raw not in users and len(bundle.history(bundle.pseudonymise(raw))):
            users.append(raw)
        if len(users) == 16:
            break

    def slate(raw):
        return [it.item_id for it in stub.Recommend(pb.RecommendRequest(user_id=raw, k=5), timeout=60).items]

    size = "ray_serve_actual_batch_size"

    def batches(s):  # batches the ranker's batch function has run since the server started (an exact count;
        # the histogram's _sum is not: Ray exports it from the buckets)
        return metric_sum(s, f"{size}_count", function_name="_candidates_batch")

    def settled():  # everything so far reported: no change for longer than Ray's metrics report interval
        last: list = [None, 0.0]

        def done(s):
            if batches(s) != last[0]:
                last[0], last[1] = batches(s), time.monotonic()
            return batches(s) > 0 and time.monotonic() - last[1] >= METRICS_SETTLE_S
        return done

    alone = {raw: slate(raw) for raw in users}
    before = batches(_wait_for_metrics(server_proc.metrics_port, settled()))
    with ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            together = dict(zip(users, pool.map(slate, users)))
            assert together == alone
    ran = batches(_wait_for_metrics(server_proc.metrics_port, settled())) - before
    calls = 3 * 16
    print(f"ranker batches {ran:.0f} for {calls} concurrent calls")
    assert 0 < ran < calls, "no ranker call was batched with another"


@pytest.mark.slow
def test_direct_ingress_answers_as_the_proxy(server_proc, known_user):
    """The same request through Serve's proxy and straight to the ingress replica gets the same answer."""
    answers = []
    for addr in (server_proc.addr, server_proc.direct_addr):
        with grpc.insecure_channel(addr) as raw:
            stub_ = pb_grpc.RecommenderStub(grpc.intercept_channel(raw, _AddKey(API_KEY)))
            rec = stub_.Recommend(pb.RecommendRequest(user_id=known_user[0], k=10), timeout=30)
            info = stub_.ModelInfo(pb.ModelInfoRequest(), timeout=30)
            answers.append(([i.item_id for i in rec.items], rec.bundle_version, info.bundle_version))
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 10
