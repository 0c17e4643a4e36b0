"""Serving closed by default: hashed, scoped, rate-limited API keys re-read while serving, TLS, no reflection.

The first tests need no Ray: the key-file format (bad lines named, good ones kept), ``prefmine serve keys``,
the check's scopes, buckets and reloads, and TLS credentials on a real grpc server over loopback with
certificates made by the test. The rest start the real ``prefmine serve`` command (prefmine.cli, its own local
Ray) with a key file, a tight rate limit, reflection asked for and TLS with required client certificates on
the direct-ingress port, and call it over real gRPC.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from live_server import launch, serve_cli, server_env
from serve_keys import make_pki, write_keys

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
FULL_KEY = "full-" + "k" * 30
RECOMMEND_KEY = "reco-" + "r" * 30
ADS_KEY = "ads-" + "a" * 30  # "*,WriteCampaigns": the write named beside the wildcard
LIMITED_KEY = "limit-" + "l" * 30
TLS_KEY = "tls-" + "t" * 30
RATE, BURST = 2.0, 4


# -- key file and check, no Ray ---------------------------------------------------------------------------------
def test_key_file_lines_named_good_ones_kept(tmp_path):
    from serve.auth import KeyFileError, hash_key, load_keys, parse_keys

    good = f"web Recommend,Search {hash_key('a' * 40)}"
    text = "\n".join([
        "# comment", "", good,
        "plain-old-key-0123456789abcdef",                      # 4: the old plaintext format
        f"web2 Recommend,Fly {hash_key('b' * 40)}",            # 5: unknown RPC
        f"web Recommend {hash_key('c' * 40)}",                 # 6: name again
        "app * sha256:XYZ",                                    # 7: not a hash
        f"bad/name * {hash_key('d' * 40)}",                    # 8: name
        f"all * {hash_key('e' * 40)}",
    ])
    keys, errors = parse_keys(text, "keys")
    assert [(k.name, sorted(k.scopes)) for k in keys] == [("web", ["Recommend", "Search"]), ("all", ["*"])]
    assert len(errors) == 5
    assert errors[0].startswith("keys: line 4: a plain key") and "prefmine serve keys" in errors[0]
    assert errors[1].startswith("keys: line 5: scope: unknown RPC 'Fly'")
    assert errors[2].startswith("keys: line 6: name 'web' is used")
    assert errors[3].startswith("keys: line 7: hash must be sha256:")
    assert errors[4].startswith("keys: line 8: name 'bad/name'")
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeyFileError, match="line 4: a plain key.*line 8: name"):
        load_keys(path)  # start-up is strict: every bad line named at once
    path.write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="holds no key"):
        load_keys(path)
    with pytest.raises(FileNotFoundError, match="api_keys_file"):
        load_keys(tmp_path / "missing")


def test_keys_add_and_hash_commands(tmp_path):
    from serve.auth import hash_key, load_keys

    path = tmp_path / "keys"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "prefmine.cli", "serve", "keys"]
    r = subprocess.run(run + ["add", "--keys-file", str(path), "--name", "shop-web", "--scope",
                              "Recommend,RecordFeedback"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert len(key) >= 40 and key not in path.read_text()  # printed once, only its hash stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (k,) = load_keys(path)
    assert (k.name, sorted(k.scopes), "sha256:" + k.digest) == ("shop-web", ["Recommend", "RecordFeedback"],
                                                               hash_key(key))
    again = subprocess.run(run + ["add", "--keys-file", str(path), "--name", "shop-web", "--scope", "*"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "already in" in again.stderr
    bad = subprocess.run(run + ["add", "--keys-file", str(path), "--name", "x", "--scope", "Nope"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown RPC 'Nope'" in bad.stderr
    h = subprocess.run(run + ["hash", "--name", "legacy", "--scope", "*"], input="old-plain-key-0123456789\n",
                       capture_output=True, text=True, env=env, timeout=120)
    assert h.returncode == 0 and h.stdout.strip() == f"legacy * {hash_key('old-plain-key-0123456789')}"


def test_check_scope_rate_and_reload(tmp_path):
    from serve.auth import ApiKeyCheck, AuthConfig, PermissionDenied, RateLimited, Unauthenticated

    now = [100.0]
    path = write_keys(tmp_path / "keys", {"web": (FULL_KEY, "*"), "reco": (RECOMMEND_KEY, "Recommend")})
    check = ApiKeyCheck(AuthConfig(keys_file=str(path), rate_per_s=2, burst=3), clock=lambda: now[0])
    assert check.check([("x-api-key", FULL_KEY)], "Search").name == "web"
    assert check.check([("authorization", f"Bearer {RECOMMEND_KEY}")], "Recommend").name == "reco"
    for md in ([], [("x-api-key", FULL_KEY + "x")], [("authorization", FULL_KEY)]):
        with pytest.raises(Unauthenticated):
            check.check(md, "Recommend")
    with pytest.raises(PermissionDenied, match="'reco' may not call Search"):
        check.check([("x-api-key", RECOMMEND_KEY)], "Search")
    for write in ("WriteCampaigns", "WriteCatalog"):  # `*` never covers the writes
        with pytest.raises(PermissionDenied, match=f"'web' may not call {write}"):
            check.check([("x-api-key", FULL_KEY)], write)
    # web has used 1 of its burst of 3 (the denied call above did not touch it); reco has its own bucket
    check.check([("x-api-key", FULL_KEY)], "Rank")
    check.check([("x-api-key", FULL_KEY)], "Rank")
    with pytest.raises(RateLimited, match="'web' is over its rate limit"):
        check.check([("x-api-key", FULL_KEY)], "Rank")
    check.check([("x-api-key", RECOMMEND_KEY)], "Recommend")
    now[0] += 0.5  # one token back at 2/s
    check.check([("x-api-key", FULL_KEY)], "Rank")
    with pytest.raises(RateLimited):
        check.check([("x-api-key", FULL_KEY)], "Rank")

    # a new key and a revoked one: seen on the first check a second after the change, bad lines dropped
    new_key = "new-" + "n" * 30
    write_keys(path, {"reco": (RECOMMEND_KEY, "Recommend"), "new": (new_key, "ModelInfo")})
    with open(path, "a") as fh:
        fh.write("a-plain-key-line-0123456789\n")
    now[0] += 0.2
    with pytest.raises(Unauthenticated):  # looked at less than a second ago
        check.check([("x-api-key", new_key)], "ModelInfo")
    now[0] += 1.0
    assert check.check([("x-api-key", new_key)], "ModelInfo").name == "new"
    with pytest.raises(Unauthenticated):
        check.check([("x-api-key", FULL_KEY)], "ModelInfo")
    # a file that cannot be read keeps the keys read last
    path.unlink()
    now[0] += 1.1
    assert check.check([("x-api-key", new_key)], "ModelInfo").name == "new"
    # off: anything goes
    assert ApiKeyCheck(AuthConfig(required=False)).check([], "Recommend") is None
    with pytest.raises(ValueError, match="api_keys_file is required"):
        AuthConfig(required=True)


class _Echo(pb_grpc.RecommenderServicer):
    def ModelInfo(self, request, context):
        return pb.ModelInfoResponse(bundle_version="tls-test")


def _tls_server(tls):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_RecommenderServicer_to_server(_Echo(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    server.start()
    return server, f"127.0.0.1:{port}"


def _model_info(addr, creds=None, timeout=10):
    from serve.client import model_info

    return model_info(addr, timeout=timeout, credentials=creds).bundle_version


def test_tls_credentials_over_loopback(tmp_path):
    from serve.tls import TlsConfig, channel_credentials

    pki = make_pki(tmp_path / "pki")
    with pytest.raises(ValueError, match="go together"):
        TlsConfig(cert_file=str(pki["server_crt"]))
    with pytest.raises(FileNotFoundError, match="--tls-client-ca"):
        TlsConfig(str(pki["server_crt"]), str(pki["server_key"]), str(tmp_path / "nope.pem"))
    server, addr = _tls_server(TlsConfig(str(pki["server_crt"]), str(pki["server_key"])))
    try:
        assert _model_info(addr, channel_credentials(str(pki["server_crt"]))) == "tls-test"
        with pytest.raises(grpc.RpcError) as info:
            _model_info(addr, timeout=3)  # plain text to a TLS port
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            _model_info(addr, channel_credentials(str(pki["client_ca"])), timeout=3)  # a CA that did not sign it
    finally:
        server.stop(None)
    server, addr = _tls_server(TlsConfig(str(pki["server_crt"]), str(pki["server_key"]), str(pki["client_ca"])))
    try:
        ca = str(pki["server_crt"])
        assert _model_info(addr, channel_credentials(ca, str(pki["client_crt"]), str(pki["client_key"]))) == \
            "tls-test"
        for creds in (channel_credentials(ca),
                      channel_credentials(ca, str(pki["stranger_crt"]), str(pki["stranger_key"]))):
            with pytest.raises(grpc.RpcError) as info:
                _model_info(addr, creds, timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


# -- the real `prefmine serve` ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_serve_refuses_to_start_without_keys_or_with_plain_keys(bundle_path, tmp_path):
    from serve.run import free_port

    port = free_port()
    r = subprocess.run(serve_cli(bundle_path, port), capture_output=True, text=True, env=server_env(), timeout=120)
    assert r.returncode == 2 and "no API keys" in r.stderr and "--insecure" in r.stderr, r.stderr
    plain = tmp_path / "plain"
    plain.write_text("old-plain-key-0123456789abcdef\n")
    r = subprocess.run(serve_cli(bundle_path, port, "--api-keys-file", plain), capture_output=True, text=True,
                       env=server_env(), timeout=120)
    assert r.returncode == 2 and "line 1: a plain key" in r.stderr, r.stderr
    pki = make_pki(tmp_path / "pki")
    r = subprocess.run(serve_cli(bundle_path, port, "--insecure", "--tls-cert", pki["server_crt"], "--tls-key",
                                 pki["server_key"]), capture_output=True, text=True, env=server_env(), timeout=120)
    assert r.returncode == 2 and "--direct-port" in r.stderr, r.stderr  # TLS needs the port it applies to
    import socket

    with socket.socket() as s:  # the refused server started nothing
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("auth") / "api_keys",
                      {"full": (FULL_KEY, "*"), "reco": (RECOMMEND_KEY, "Recommend"),
                       "limited": (LIMITED_KEY, "ModelInfo"), "tls-client": (TLS_KEY, "Recommend,ModelInfo"),
                       "ads": (ADS_KEY, "*,WriteCampaigns")})


@pytest.fixture(scope="module")
def server(bundle_path, keys_path, pki, tmp_path_factory):
    """`prefmine serve` with hashed keys, rate limit 2/s burst 4, --reflection, and direct ingress with TLS that
    requires client certificates."""
    from bench.serve_latency import free_direct_port
    from serve.run import free_port

    port = free_port()
    direct = free_direct_port(port)
    cmd = serve_cli(bundle_path, port, "--api-keys-file", keys_path, "--rate-limit", RATE, "--rate-burst", BURST,
                    "--reflection", "--direct-port", direct, "--tls-cert", pki["server_crt"], "--tls-key",
                    pki["server_key"], "--tls-client-ca", pki["client_ca"],
                    "--feedback-db", tmp_path_factory.mktemp("fb") / "feedback.sqlite")
    sp = launch(cmd, f"127.0.0.1:{port}", f"127.0.0.1:{direct}",
                ready_text=f"direct ingress on 127.0.0.1:{direct} (TLS, client certificates required)")
    yield sp
    assert sp.stop() == 0, "".join(sp.lines[-40:])


def _call(addr, rpc, request, key=None, creds=None, timeout=30):
    channel = grpc.secure_channel(addr, creds) if creds else grpc.insecure_channel(addr)
    with channel:
        md = (("x-api-key", key),) if key else ()
        return getattr(pb_grpc.RecommenderStub(channel), rpc)(request, timeout=timeout, metadata=md)


def _code(fn, *args, **kw):
    try:
        fn(*args, **kw)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


@pytest.mark.slow
def test_wrong_key_and_wrong_scope(server):
    reco = pb.RecommendRequest(user_id="auth-test-user", k=2)
    assert len(_call(server.addr, "Recommend", reco, RECOMMEND_KEY).items) == 2
    code, details = _code(_call, server.addr, "Recommend", reco, "not-a-key-0123456789abcdef")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid API key" in details
    code, details = _code(_call, server.addr, "Recommend", reco)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in details
    code, details = _code(_call, server.addr, "Search", pb.SearchRequest(user_id="u", query="news", k=1),
                          RECOMMEND_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'reco' may not call Search" in details
    code, _ = _code(_call, server.addr, "RecordFeedback", pb.RecordFeedbackRequest(
        events=[pb.Event(user_id="u", item_id="i", type=1, timestamp=int(time.time()))]), RECOMMEND_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert _call(server.addr, "ModelInfo", pb.ModelInfoRequest(), FULL_KEY).n_items > 0
    # campaign and catalogue writes need their scope named: `*` alone is refused before anything is stored
    campaigns = pb.WriteCampaignsRequest(rows=[pb.CampaignRow(campaign_id="auth-test-camp", daily_budget=1.0)])
    code, details = _code(_call, server.addr, "WriteCampaigns", campaigns, FULL_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'full' may not call WriteCampaigns" in details
    code, details = _code(_call, server.addr, "WriteCatalog", pb.WriteCatalogRequest(
        rows=[pb.CatalogRow(item_id="auth-test-item", retire=True)]), FULL_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'full' may not call WriteCatalog" in details
    assert _call(server.addr, "WriteCampaigns", campaigns, ADS_KEY).stored == 1
    assert len(_call(server.addr, "Recommend", reco, ADS_KEY).items) == 2  # its `*` still covers the rest
    code, _ = _code(_call, server.addr, "WriteCatalog", pb.WriteCatalogRequest(
        rows=[pb.CatalogRow(item_id="auth-test-item", retire=True)]), ADS_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.slow
def test_rate_limit_per_key(server):
    """Burst 4 at 2/s: of 12 calls sent at once, the first ~4 pass and the rest get RESOURCE_EXHAUSTED; another
    key is not affected; a second later the key passes again."""
    codes = [_code(_call, server.addr, "ModelInfo", pb.ModelInfoRequest(), LIMITED_KEY)[0] for _ in range(12)]
    ok = codes.count(grpc.StatusCode.OK)
    limited = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    print(f"rate limit: {ok} OK, {limited} RESOURCE_EXHAUSTED of 12 back-to-back calls")
    assert ok + limited == 12 and BURST <= ok <= BURST + 4 and limited >= 12 - BURST - 4
    assert codes[:BURST] == [grpc.StatusCode.OK] * BURST
    code, details = _code(_call, server.addr, "ModelInfo", pb.ModelInfoRequest(), LIMITED_KEY)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "'limited' is over its rate limit" in details
    assert _call(server.addr, "ModelInfo", pb.ModelInfoRequest(), FULL_KEY).n_items > 0  # its own bucket
    time.sleep(1.2)
    assert _call(server.addr, "ModelInfo", pb.ModelInfoRequest(), LIMITED_KEY).n_items > 0


@pytest.mark.slow
def test_key_added_while_serving_is_accepted_without_restart(server, keys_path):
    from serve.auth import add_key

    before = sum(line.count("Adding 1 replica") for line in server.lines)
    key = add_key(keys_path, "added-later", "ModelInfo")
    t0 = time.monotonic()
    while True:
        code, _ = _code(_call, server.addr, "ModelInfo", pb.ModelInfoRequest(), key)
        if code == grpc.StatusCode.OK:
            break
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - t0 < 5.0, "the new key was not accepted within 5 s"
        time.sleep(0.1)
    print(f"new key accepted {time.monotonic() - t0:.2f} s after it was added")
    assert sum(line.count("Adding 1 replica") for line in server.lines) == before  # no replica restarted
    code, _ = _code(_call, server.addr, "Recommend", pb.RecommendRequest(user_id="u", k=1), key)
    assert code == grpc.StatusCode.PERMISSION_DENIED  # its scope holds


@pytest.mark.slow
def test_direct_ingress_tls_requires_a_client_certificate(server, pki):
    from serve.tls import channel_credentials

    ca = str(pki["server_crt"])
    mtls = channel_credentials(ca, str(pki["client_crt"]), str(pki["client_key"]))
    assert len(_call(server.direct_addr, "Recommend", pb.RecommendRequest(user_id="tls-user", k=3), TLS_KEY,
                     mtls).items) == 3
    for creds in (None, channel_credentials(ca),
                  channel_credentials(ca, str(pki["stranger_crt"]), str(pki["stranger_key"]))):
        code, _ = _code(_call, server.direct_addr, "ModelInfo", pb.ModelInfoRequest(), TLS_KEY, creds, timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE, creds
    # the key is still checked behind TLS
    code, _ = _code(_call, server.direct_addr, "ModelInfo", pb.ModelInfoRequest(), "bad-key-0123456789abc", mtls)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # `prefmine client recommend` over mutual TLS
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "client", "recommend", "--addr", server.direct_addr,
                        "--user", "tls-user", "--k", "3", "--tls-ca", ca, "--tls-cert", str(pki["client_crt"]),
                        "--tls-key", str(pki["client_key"])], capture_output=True, text=True,
                       env={**server_env(), "PREFMINE_API_KEY": TLS_KEY}, timeout=120)
    assert r.returncode == 0 and "bundle " in r.stdout and len(r.stdout.strip().splitlines()) == 3 + 3, \
        r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "client", "recommend", "--addr", server.direct_addr,
                        "--user", "tls-user", "--k", "3", "--tls-ca", ca], capture_output=True, text=True,
                       env={**server_env(), "PREFMINE_API_KEY": TLS_KEY}, timeout=120)
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


@pytest.mark.slow
def test_reflection_when_asked_for_and_size_cap(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.addr) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        assert {"prefmine.v1.Recommender", "grpc.health.v1.Health"} <= set(db.get_services())
        desc = DescriptorPool(db).FindServiceByName("prefmine.v1.Recommender")
        assert "Recommend" in {m.name for m in desc.methods}
        # Serve's proxy itself refuses a message over 4 MiB (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE), before any parsing
        call = ch.unary_unary("/prefmine.v1.Recommender/Recommend", request_serializer=None,
                              response_deserializer=pb.RecommendResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(pb.RecommendRequest(user_id="u", k=1, placement="y" * (5 << 20)).SerializeToString(), timeout=60,
                 metadata=(("x-api-key", FULL_KEY),))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details(), info.value.details()
