"""`serve deploy serve/config.yaml` onto a running `ray start` cluster, then a new bundle version rolled in by
deploying the config again, while clients keep calling.

This is the operator's path (README, "Serving on a cluster"): the config file in the repository, with only the
ports, the bundle, the key file and the feedback log changed, goes to a real head node (tests/test_cluster.py's
`ray_head`: `ray start --head --block` in its own process group) through Ray's own `serve` CLI. Checked: the
application comes up from the config alone and answers every client check over gRPC (API key required,
Recommend, ModelInfo); a second `serve deploy` that only changes the deployments' `user_config.bundle` (one
YAML anchor in the file) rolls the new version in under an 8-thread load with no failed request, ModelInfo
reports it afterwards, and no replica was replaced (Serve reconfigures them in place: serve/served.py).

Found by this test: changing `args.bundle` instead also rolls out without a failed request, but Serve hashes an
application's args into its code version, so every replica is replaced; the config's comments say so.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import bundle_versions
from live_server import API_KEY, BIN, ROOT, free_port, keys_file_for
from test_serve_faults import Load, known_users

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc


def serve_deploy(config: Path, address: str) -> None:
    run = subprocess.run([str(BIN / "serve"), "deploy", str(config), "--address", address], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]


def model_info(addr: str) -> pb.ModelInfoResponse:
    with grpc.insecure_channel(addr) as ch:
        return pb_grpc.RecommenderStub(ch).ModelInfo(pb.ModelInfoRequest(), timeout=10,
                                                     metadata=(("x-api-key", API_KEY),))


def wait_for_version(addr: str, version: str, address: str, timeout_s: float = 300) -> float:
    """Seconds until ModelInfo on `addr` reports `version` (the Serve status in the failure message)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout_s:
        try:
            if model_info(addr).bundle_version == version:
                return time.monotonic() - t0
        except grpc.RpcError as e:
            last = e
        time.sleep(1)
    pytest.fail(f"ModelInfo never reported {version} within {timeout_s:.0f} s ({last}); Serve status:\n"
                + json.dumps(serve_applications(address), indent=1)[-4000:])


def serve_applications(address: str) -> dict:
    with urllib.request.urlopen(f"{address}/api/serve/applications/", timeout=10) as r:
        return json.loads(r.read())


def replica_ids(address: str) -> dict[str, set[str]]:
    """{deployment: {replica id}} of the prefmine application, from the dashboard's Serve REST API."""
    app = serve_applications(address)["applications"]["prefmine"]
    return {name: {r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING"}
            for name, d in app["deployments"].items()}


@pytest.mark.slow
def test_serve_deploy_of_the_repository_config_then_a_rollout_by_redeploying(ray_head, bundle_path, tmp_path):
    address = ray_head
    dirs, names = bundle_versions(bundle_path, tmp_path / "bundles", {"v1": "", "v2": "-deployed"})
    (old_dir, new_dir), (old_version, new_version) = dirs.values(), names.values()
    keys = keys_file_for(tmp_path / "api_keys")

    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    grpc_port = free_port()
    config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": free_port()}
    config["grpc_options"]["port"] = grpc_port
    (app,) = config["applications"]
    assert set(app["args"]) == {"bundle", "candidates", "api_keys_file", "feedback_db", "rate_limit", "rate_burst"}
    # rate_limit 0: the rollout is measured under load, not the per-key limiter (tests/test_serve_auth.py)
    app["args"].update(bundle=str(old_dir), api_keys_file=str(keys), feedback_db=str(tmp_path / "feedback.sqlite"),
                       rate_limit=0)
    served = app["deployments"][0]["user_config"]  # the &bundle anchor: one object for all three deployments
    assert all(d["user_config"] is served for d in app["deployments"])
    served["bundle"] = str(old_dir)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    addr = f"127.0.0.1:{grpc_port}"

    serve_deploy(path, address)
    print(f"serve deploy: ModelInfo answered after {wait_for_version(addr, old_version, address):.1f} s")
    users = known_users(bundle_path)
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RecommenderStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(pb.RecommendRequest(user_id=users[0], k=5), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        rec = stub.Recommend(pb.RecommendRequest(user_id=users[0], k=5), timeout=30,
                             metadata=(("x-api-key", API_KEY),))
        assert len(rec.items) == 5 and rec.bundle_version == old_version
    before = replica_ids(address)
    assert set(before) == {"RecommenderIngress", "RankerDeployment", "EncoderDeployment"}
    assert all(before.values()), before

    with Load(addr, users) as load:
        time.sleep(5)
        served["bundle"] = str(new_dir)  # the one line an operator edits; args stay as they were
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        t0 = time.monotonic()
        serve_deploy(path, address)
        wait_for_version(addr, new_version, address)
        t_done = time.monotonic()
        time.sleep(5)
    calls = load.calls
    failed = [c for c in calls if not c[2]]
    print(f"rollout by serve deploy: {len(calls)} requests, {len(failed)} failed, new version answering "
          f"{t_done - t0:.1f} s after the deploy call")
    assert calls and not failed, f"{len(failed)} of {len(calls)} failed: {sorted({c[3] for c in failed})}"
    assert {c[4] for c in calls} <= {old_version, new_version}
    assert any(c[4] == new_version for c in calls)
    assert not [c for c in calls if c[0] > t_done and c[4] != new_version], "old version answered after the switch"
    assert model_info(addr).bundle_version == new_version
    assert replica_ids(address) == before, "replicas were replaced: the rollout was not a lightweight update"


def test_serve_refuses_a_bad_placement_before_starting_ray(bundle_path, tmp_path, capsys):
    """`prefmine serve --placement` and the `placement` application arg are checked before anything is deployed:
    an unknown deployment or a file that does not parse is refused naming it, exit status 2 (each key's checks:
    tests/test_config.py)."""
    from prefmine.config import ConfigError
    from serve.app import build_app
    from serve.run import run_serve

    path = tmp_path / "placement.yaml"
    for text, named in (("deployments: {Ranker: {num_replicas: 2}}", "Ranker"),
                        ("deployments: [unclosed", "--placement")):
        path.write_text(text)
        assert run_serve(str(bundle_path), 50999, insecure=True, placement=str(path)) == 2
        assert named in capsys.readouterr().err
    with pytest.raises(ConfigError, match="EncoderDeployment.resources"):
        build_app({"bundle": str(bundle_path), "require_api_key": False,
                   "placement": {"EncoderDeployment": {"resources": {"GPU": 1}}}})
