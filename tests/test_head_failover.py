"""The head can fail (issue 24): a real Ray head with GCS fault tolerance on a real Redis (redis-server on
loopback, with a password), the tiny bundle served on it with Serve's proxy and direct ingress, Recommend load on
both, and the head's gcs_server SIGKILLed and restarted from its own command line (cluster/head_failover.py).
Checks: the GCS was really down mid-outage; before the kill, during the outage and after the restart at most
`MAX_FAILED_SHARE` of each path's requests fail (none did in the runs here: a running replica needs no GCS); a
new driver sees the Serve application RUNNING again after the restart, which it could not without the state the
GCS reloaded from Redis; both paths answer after the drill; and stop_head leaves no process of the head behind.
A head whose GCS cannot come back (the old ``ray start --block`` drill) fails every call after the restart and the
RUNNING check.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from cluster.head_failover import (
    Drill,
    FailoverConfig,
    answers,
    free_port,
    serve_on,
    start_head,
    start_redis,
    stop_group,
    stop_head,
)

# The stated bound on failed calls in each phase (before, outage, after), per path: slack for a 5 s
# deadline missed on a loaded 2-core machine, far below what a head that does not come back produces (all of them).
MAX_FAILED_SHARE = 0.02


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        msg = "redis-server is not installed (run cluster/install_services.sh)"
        if os.environ.get("CI"):  # CI installs it (.ci/run): a skip there would hide the test
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.serve
@pytest.mark.cluster
def test_serving_survives_the_head_gcs_dying(bundle_path):
    _require_redis()
    tmp_path = Path(tempfile.mkdtemp(prefix="pm-ha-"))  # short: Ray's socket paths live under it
    from bench.serve_latency import free_direct_port
    from serve.run import SERVE_ENV, direct_ingress_env

    password = os.urandom(16).hex()
    redis = head = server = None
    try:
        redis = start_redis(tmp_path / "redis", free_port(), password)
        redis_port = int(redis.args[redis.args.index("--port") + 1])
        port = free_port()
        direct_port = free_direct_port(port)
        head = start_head(tmp_path, redis_port, password, extra_env={**SERVE_ENV, **direct_ingress_env(direct_port)})
        server = serve_on(head, bundle_path, port, direct_port, tmp_path / "feedback.sqlite", log=tmp_path / "serve.log")
        targets = {"proxy": (f"127.0.0.1:{port}", (("application", "prefmine"),)),
                   "direct": (f"127.0.0.1:{direct_port}", ())}
        deadline = time.time() + 600
        while not all(answers(t, md) for t, md in targets.values()):
            assert server.poll() is None, f"the server exited before it answered:\n{_tail(tmp_path / 'serve.log')}"
            assert time.time() < deadline, "the served app did not answer within 600 s"
            time.sleep(2)
        result = Drill(head, targets, FailoverConfig(warmup_s=3, outage_s=6, settle_s=3,
                                                     recover_timeout_s=120)).run()
        answering = {name: answers(t, md) for name, (t, md) in targets.items()}
    finally:
        stop_group(server)
        left = stop_head(head)
        stop_group(redis)
        shutil.rmtree(tmp_path, ignore_errors=True)
    print(result)
    assert not left, f"processes of the drill's head outlived stop_head: {sorted(left)}"
    assert result["gcs_down_mid_outage"], result
    assert result["serve_running_after_restart_s"] is not None, result
    assert all(answering.values()), (answering, result)
    for name, phases in result["targets"].items():
        for phase, p in phases.items():
            assert p["requests"] > 0, (name, phase, result)
            assert p["failed"] <= MAX_FAILED_SHARE * p["requests"], (name, phase, result)
