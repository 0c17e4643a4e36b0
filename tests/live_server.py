"""Starting and stopping real servers for the tests: `prefmine serve` in a subprocess, and a `ray start --head` node.

One helper for every serving test (tests/test_serve*.py, test_erasure_serving.py, the session's served app in
tests/conftest.py): the server runs in its own session (process group) with its own local Ray, so killing it
kills its whole Ray and nothing else; it counts as up once it printed its ready line. The Ray head helper is the
one the cluster tests share (`ray_head` and `ray_head_token` in tests/conftest.py).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from serve_keys import write_keys

from cluster.head_failover import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
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
    """The serving tests' key file: API_KEY and SECOND_KEY, both with every RPC in scope, stored hashed."""
    return write_keys(path, {"test": (API_KEY, "*"), "second": (SECOND_KEY, "*")})




def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid and (d / "stat").read_text().split()[2] != "Z":
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError, OSError):
                pass
    return out


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


def server_env() -> dict[str, str]:
    """The environment of a server subprocess: this tree first on the path, no cluster address, no key file."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFMINE_API_KEYS_FILE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


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


def _ray_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment a test's `ray start` runs in: no cluster address or token of the caller, auth off, one
    thread per process, this venv first on PATH, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    full_env.update({"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                     "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})})
    return full_env


def _node_ports(ports: list[int] | None = None) -> list[str]:
    """Free ports for the per-node servers whose defaults are fixed (two nodes on one machine would collide)."""
    agent, manager, objects, metrics = ports or free_ports(4)
    return ["--dashboard-agent-listen-port", str(agent), "--node-manager-port", str(manager),
            "--object-manager-port", str(objects), "--metrics-export-port", str(metrics)]


def _start_ray(args: list[str], env: dict[str, str] | None, cwd: Path | None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", *args],
                            env=_ray_env(env), cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """Stop a `ray start --block` node by its process group (its raylet, workers and, on a head, GCS): `first`
    first, SIGKILL if it outlives the grace. `ray start --block` rarely exits within 30 s of SIGTERM on a loaded
    machine; a throwaway node gets 10 s."""
    for sig, grace in ((first, 10), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def ray_head_node(num_cpus: int = 2, env: dict[str, str] | None = None, ready_on_http_error: bool = False,
                  temp_dir: Path | None = None, cwd: Path | None = None) -> Iterator[tuple[str, int]]:
    """A real Ray head node (`ray start --head --block`, dashboard on loopback) in its own process group, killed
    as a group at the end so that the session's other Ray instances are left alone (`ray stop` would stop every
    Ray on the machine). Yields (dashboard address, GCS port). `env` is added to this process's environment
    (e.g. RAY_AUTH_MODE=token and its token path); ``ready_on_http_error``: a dashboard that answers with an
    HTTP error (an auth refusal) counts as up. `temp_dir` (Ray's default /tmp/ray if None) and `cwd`: the node's
    own temp and working directories."""
    dash, gcs, client, *node = free_ports(7)
    ports = ["--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
             *_node_ports(node)]
    where = ["--temp-dir", str(temp_dir)] if temp_dir else []
    proc = _start_ray(["--head", "--num-cpus", str(num_cpus), "--include-dashboard", "true",
                       "--dashboard-host", "127.0.0.1", *ports, *where], env, cwd)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:
                if ready_on_http_error:
                    break  # answering (with an auth error): up
            except OSError:
                pass
            assert proc.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray dashboard did not come up in 180 s"
            time.sleep(1)
        yield address, gcs
    finally:
        stop_node(proc)
        # `ray start` recorded this head as the machine's current cluster; `ray stop` would remove the record, a
        # group kill does not, and a later plain ray.init() would try to join the dead head
        current = Path(temp_dir or "/tmp/ray") / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()


def alive_nodes(address: str) -> dict[str, dict[str, float]]:
    """{node id: total resources} of the cluster's live nodes (Ray's state API through the dashboard)."""
    from ray.util.state import list_nodes

    return {n.node_id: n.resources_total for n in list_nodes(address=address, filters=[("state", "=", "ALIVE")],
                                                             raise_on_missing_output=False)}


@dataclass
class WorkerNode:
    """A `ray start --address` node of a test cluster: its process group, Ray node id, temp and working dirs."""

    proc: subprocess.Popen
    node_id: str
    temp_dir: Path
    cwd: Path

    def processes(self, program: str) -> list[int]:
        """Pids of this node's processes running `program` (the file name of their argv[0], e.g. "raylet")."""
        out = []
        for pid in session_pids(self.proc.pid):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if Path(argv0).name == program:
                out.append(pid)
        return out


@dataclass
class RayCluster:
    """A head and worker nodes on this machine (`ray_cluster`); add_worker starts one more node."""

    address: str  # the head's dashboard (job server and state API)
    gcs: int
    base: Path
    env: dict[str, str]
    workers: list[WorkerNode] = field(default_factory=list)
    head_temp_dir: Path | None = None  # the head's --temp-dir (Prometheus service discovery file, logs)

    def add_worker(self, num_cpus: int, resources: dict[str, float], timeout: float = 180) -> WorkerNode:
        """Start a worker node with its own temp dir (under a short path: Ray's socket paths must stay under
        107 bytes) and working directory, advertising `resources`; returns once the head lists it alive."""
        name = f"w{len(self.workers) + 1}"
        temp_dir = Path(tempfile.mkdtemp(prefix=f"pm-{name}-", dir="/tmp"))
        cwd = self.base / name
        cwd.mkdir(parents=True, exist_ok=True)
        before = set(alive_nodes(self.address))
        proc = _start_ray(["--address", f"127.0.0.1:{self.gcs}", "--num-cpus", str(num_cpus), "--resources",
                           json.dumps(resources), "--temp-dir", str(temp_dir), *_node_ports()], self.env, cwd)
        deadline = time.time() + timeout
        while True:
            new = [n for n, res in alive_nodes(self.address).items()
                   if n not in before and all(res.get(k, 0) >= v for k, v in resources.items())]
            if new:
                break
            assert proc.poll() is None, f"ray start --address exited ({name})"
            assert time.time() < deadline, f"worker node {name} did not join in {timeout:.0f} s"
            time.sleep(1)
        node = WorkerNode(proc, new[0], temp_dir, cwd)
        self.workers.append(node)
        return node


@contextmanager
def ray_cluster(base: Path, head_cpus: int = 2, workers: tuple[tuple[int, dict[str, float]], ...] = (),
                env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """A real multi-node Ray cluster on this machine: `ray_head_node` (its own temp and working directories) plus
    one `ray start --address` node per (num_cpus, custom resources) in `workers`, each with its own temp and
    working directories (Ray allows a temp dir per node: `--temp-dir` "can be specified per node"). `env` goes
    to every node (what a real node has in its environment, e.g. object store credentials). Every node is
    stopped by its own process group at the end, the head last; nothing else on the machine is touched."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "head").mkdir(exist_ok=True)
    head_tmp = Path(tempfile.mkdtemp(prefix="pm-head-", dir="/tmp"))
    cluster = None
    try:
        with ray_head_node(num_cpus=head_cpus, env=env, temp_dir=head_tmp, cwd=base / "head") as (address, gcs):
            cluster = RayCluster(address, gcs, base, dict(env or {}), head_temp_dir=head_tmp)
            try:
                for num_cpus, resources in workers:
                    cluster.add_worker(num_cpus, resources)
                yield cluster
            finally:
                for node in cluster.workers:
                    stop_node(node.proc)
    finally:
        for d in [head_tmp, *(n.temp_dir for n in (cluster.workers if cluster else []))]:
            shutil.rmtree(d, ignore_errors=True)


@contextmanager
def s3_bucket(bucket: str, prefix: str) -> Iterator[str]:
    """A fresh bucket on moto's S3 server (`moto[server]`, the dev extra) on 127.0.0.1, reached through pyarrow's
    own S3 client as a node reaches any S3-compatible store; yields ``s3://bucket/prefix?<endpoint options>``.
    Credentials are each process's own (AWS_* in its environment; moto accepts any)."""
    from prefmine.storage import resolve

    server_mod = pytest.importorskip("moto.server", reason="moto[server] (dev extra) not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = f"?endpoint_override={host}:{port}&scheme=http"
        fs, _ = resolve(f"s3://{bucket}{options}&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield f"s3://{bucket}/{prefix}{options}"
    finally:
        server.stop()
