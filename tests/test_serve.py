"""Serving: the generated gRPC code is current, and a real Serve app answers real gRPC calls.

The server is the `prefmine serve` code path (serve.run.run_serve) in a subprocess with its own local Ray,
serving the session's ``tiny_bundle`` (tests/conftest.py) on a free port of 127.0.0.1; the tests call it through a
stub generated from protos/prefmine/v1/recommender.proto. One server for the module (start-up is ~30 s on an
idle 2-core machine), stopped with SIGTERM at the end, which must exit 0.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300
UNKNOWN_USER = "no-such-user-in-any-catalogue"


# -- generated code ------------------------------------------------------------------------------------------
def test_generated_code_is_current():
    r = subprocess.run(
        [sys.executable, "-m", "cluster.gen_protos", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_gen_protos_check_detects_stale_code(tmp_path):
    from cluster import gen_protos

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
    from serve.app import PolicyDeployment

    cls = PolicyDeployment.func_or_class
    obj = cls.__new__(cls)
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
    assert names == {"RecommenderIngress", "RankerDeployment", "PolicyDeployment", "EncoderDeployment"}
    for d in application.deployments:
        assert 0 < d.ray_actor_options.num_cpus <= 0.25


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


# -- a real Serve app ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_path(request) -> Path:
    """The session's tiny bundle (PREFMINE_SERVE_TEST_BUNDLE overrides it, for developing the server)."""
    override = os.environ.get("PREFMINE_SERVE_TEST_BUNDLE")
    return Path(override) if override else Path(request.getfixturevalue("tiny_bundle"))


def _free_port() -> int:
    from serve.run import free_port

    return free_port()


@pytest.fixture(scope="module")
def server(bundle_path):
    """`run_serve(bundle, port)` in a subprocess; yields "127.0.0.1:PORT" once it printed its ready line."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    code = f"import sys; from serve.run import run_serve; sys.exit(run_serve({str(bundle_path)!r}, {port}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def _pump():
        for line in proc.stdout:
            lines.append(line)
            if "prefmine serve: ready" in line:
                ready.set()

    threading.Thread(target=_pump, daemon=True).start()
    t0 = time.monotonic()
    while not ready.wait(1.0):
        if proc.poll() is not None or time.monotonic() - t0 > READY_TIMEOUT_S:
            proc.kill()
            pytest.fail("server did not get ready:\n" + "".join(lines[-60:]))
    ready_line = next(x for x in lines if "prefmine serve: ready" in x)
    print(ready_line.strip())
    assert f"127.0.0.1:{port}" in ready_line
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("server did not stop within 90 s of SIGTERM:\n" + "".join(lines[-40:]))
    assert rc == 0, "".join(lines[-40:])


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server) as channel:
        yield pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def bundle(bundle_path):
    from prefmine.bundle import Bundle

    return Bundle.load(bundle_path)


def _raw_user_ids(bundle):
    """Raw user ids of the data set the bundle was trained on (its manifest's dataset source and category)."""
    ds = bundle.manifest.get("dataset", {})
    source, category = ds.get("source", "amazon2018"), ds.get("category", "Magazine_Subscriptions")
    data = Path(os.environ.get("PREFMINE_DATA_DIR", ROOT.parent / "shared" / "data"))
    if source == "amazon2018":
        five = data / "amazon2018" / category / f"{category}_5.json.gz"
        if five.is_file():
            with gzip.open(five, "rt") as fh:
                yield from (json.loads(line)["reviewerID"] for line in fh)
        csv = data / "amazon2018" / category / f"{category}.csv"
        if csv.is_file():
            with open(csv) as fh:
                yield from (line.split(",")[1] for line in fh)
    elif source == "movielens":
        with open(data / "movielens" / "ml-latest-small" / "ratings.csv") as fh:
            next(fh)
            yield from (line.split(",")[0] for line in fh)


@pytest.fixture(scope="module")
def known_user(bundle) -> tuple[str, set[str]]:
    """A raw user id that has a history in the bundle, and the raw ids of the items in that history."""
    for raw in _raw_user_ids(bundle):
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
def test_client_printer(server, known_user, capsys):
    from serve.client import client_recommend

    assert client_recommend(server, known_user[0], 3) == 0
    out = capsys.readouterr().out
    assert "bundle" in out and out.count("\n") >= 4
    assert client_recommend(server, "someone", 0) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
