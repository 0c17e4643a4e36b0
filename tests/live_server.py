"""Starting and stopping real servers for the tests: `prefmine serve` in a subprocess, and a `ray start --head` node.

One helper for every serving test (tests/test_serve*.py, test_erasure_serving.py, the session's served app in
tests/conftest.py): the server runs in its own session (process group) with its own local Ray, so killing it
kills its whole Ray and nothing else; it counts as up once it printed its ready line. The Ray nodes, clusters and
S3 bucket come from cluster/local_cluster.py (re-exported here), shared with bench.cluster_scale.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serve_keys import write_keys

from cluster import local_cluster
from cluster.head_failover import free_port, free_ports  # noqa: F401  (re-exported to the tests)
from cluster.local_cluster import (  # noqa: F401  (re-exported: the tests import them from here)
    BIN,
    RayCluster,
    WorkerNode,
    alive_nodes,
    ray_cluster,
    ray_head_node,
    session_pids,
    stop_node,
)

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 420  # a loaded 2-core machine: start-up of Ray + Serve + four replicas can take minutes
UNKNOWN_USER = "no-such-user-in-any-catalogue"
API_KEY = "test-key-" + "0123456789abcdef"
SECOND_KEY = "second-key-abcdefghijkl"


def prefmine_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `prefmine` command line of this tree in a subprocess (auth to Ray disabled, as the test heads run),
    output captured. Run as `python -m prefmine.cli` from the tree's root, not the venv's `prefmine` script: a
    venv shared by several checkouts has its editable install in one of them, and `prefmine jobs submit` ships
    the tree its own code lives in as the job's working_dir."""
    return subprocess.run([sys.executable, "-m", "prefmine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def keys_file_for(path: Path) -> Path:
    """The serving tests' key file: API_KEY (every RPC, the writes named) and SECOND_KEY (`*`: every RPC but the
    writes), stored hashed."""
    return write_keys(path, {"test": (API_KEY, "*,WriteCatalog,WriteCampaigns"), "second": (SECOND_KEY, "*")})




class ServeProcess:
    """A server subprocess (its own session, so its Ray dies with it); ``addr`` once ready."""

    def __init__(self, proc, addr, lines, metrics_port=None, direct_addr=None):
        self.proc, self.addr, self.lines, self.metrics_port = proc, addr, lines, metrics_port
        self.direct_addr = direct_addr  # the ingress replica's own gRPC server (direct ingress), if on

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM, and the exit status (a graceful stop must be 0)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail("server did not stop within 90 s of SIGTERM:\n" + "".join(self.lines[-40:]))

    def kill(self) -> None:
        """SIGKILL every process of the server's session (driver, Ray's GCS and raylet, every replica)."""
        sid = self.proc.pid
        for _ in range(20):
            pids = session_pids(sid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.proc.wait(timeout=30)
        assert not session_pids(sid), "processes of the killed server are still alive"


# How often the test servers' Ray exports metrics (Ray's default: 10 s). A test that waits for the counters to stop
# moving waits METRICS_SETTLE_S, a few report intervals.
METRICS_REPORT_S = 1.0
METRICS_SETTLE_S = 4 * METRICS_REPORT_S


def server_env() -> dict[str, str]:
    """The environment of a server subprocess: the benchmarks' child environment (bench.loop_service.child_env:
    this tree first on the path, no key file, one thread), a Ray of its own (RAY_ADDRESS=local: `prefmine serve`
    without --address would otherwise join any cluster a `ray start` on this machine recorded as current), and
    metrics exported every METRICS_REPORT_S."""
    from bench.loop_service import child_env

    return {**child_env(), "RAY_ADDRESS": "local",
            "RAY_metrics_report_interval_ms": str(int(METRICS_REPORT_S * 1000))}


def launch(argv: list[str], addr: str, direct_addr: str | None = None, metrics_port: int | None = None,
           ready_text: str | None = None) -> ServeProcess:
    """Run `argv` (a command that serves on `addr`) in its own session and wait for its ready line, which must
    name `addr` (and `ready_text`, e.g. the direct-ingress port and its TLS mode, when given). A server that
    exits or is not ready in READY_TIMEOUT_S is killed with its whole session and the test fails with its log."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
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
            ServeProcess(proc, "", lines).kill()  # its whole session: a half-started Ray must not linger
            pytest.fail("server did not get ready:\n" + "".join(lines[-60:]))
    ready_line = next(x for x in lines if "prefmine serve: ready" in x)
    print(ready_line.strip(), f"({time.monotonic() - t0:.0f} s)")
    assert addr in ready_line, ready_line
    if ready_text:
        assert ready_text in ready_line, ready_line
    return ServeProcess(proc, addr, lines, metrics_port, direct_addr)


def start_server(bundle_path, api_keys_file=None, feedback_db=None, metrics_port=None,
                 direct: bool = False, rate_limit: float = 0, experiment=None) -> ServeProcess:
    """`run_serve(bundle, port, ...)` (the code path of `prefmine serve`) in a subprocess (``direct``: with
    direct ingress on a free port range too; ``experiment``: an A/B experiment file, `--experiment`); returns
    once it printed its ready line. No API key file means ``insecure=True``. ``rate_limit`` 0 (no per-key limit) by default: these servers are loaded by tests of the
    service, not of the limiter (tests/test_serve_auth.py tests that)."""
    port = free_port()
    direct_port = None
    if direct:
        from bench.serve_latency import free_direct_port

        direct_port = free_direct_port(port)
    # address="local": always a fresh Ray of its own, never a cluster someone started with `ray start` on this
    # machine (killing the server must kill its whole Ray; other people's clusters are left alone)
    kwargs = (f"api_keys_file={api_keys_file and str(api_keys_file)!r}, "
              f"feedback_db={feedback_db and str(feedback_db)!r}, address='local', metrics_port={metrics_port!r}, "
              f"direct_port={direct_port!r}, insecure={api_keys_file is None!r}, rate_limit={rate_limit!r}, "
              f"experiment={experiment and str(experiment)!r}")
    code = (f"import sys; from serve.run import run_serve; "
            f"sys.exit(run_serve({str(bundle_path)!r}, {port}, {kwargs}))")
    direct_addr = f"127.0.0.1:{direct_port}" if direct_port else None
    return launch([sys.executable, "-c", code], f"127.0.0.1:{port}", direct_addr, metrics_port,
                  ready_text=f"direct ingress on {direct_addr}" if direct_addr else None)


def serve_cli(bundle_path, port: int, *extra) -> list[str]:
    """The `prefmine serve` command line (prefmine.cli) for `bundle_path` on `port`, plus `extra` arguments."""
    return [sys.executable, "-m", "prefmine.cli", "serve", "--bundle", str(bundle_path), "--grpc-port", str(port),
            *map(str, extra)]


def raw_user_ids(bundle) -> Iterator[str]:
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


@contextmanager
def s3_bucket(bucket: str, prefix: str) -> Iterator[str]:
    """cluster.local_cluster.s3_bucket, the test skipped where moto[server] (the dev extra) is not installed."""
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) not installed")
    with local_cluster.s3_bucket(bucket, prefix) as uri:
        yield uri
