"""A real multi-node Ray cluster on one machine, and an S3-compatible server on loopback, for tests and benchmarks.

`ray_cluster` starts `ray start --head` plus `ray start --address` nodes, each in its own process group with its
own temp dir, working directory and ports, and stops each by its process group (never `ray stop`, which would
stop every Ray on the machine). `s3_bucket` runs moto's S3 server (`moto[server]`, the dev extra) on 127.0.0.1.
tests/test_multinode.py and `python -m bench.cluster_scale` use them; tests/live_server.py re-exports them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cluster.head_failover import free_ports
from prefmine.store import CACHE_ENV

BIN = Path(sys.executable).parent
# each node's own bundle cache, in its working directory (prefmine.store: $PREFMINE_BUNDLE_CACHE), as a real node
# caches on its own disk: a Serve replica fetches a bundle URI into its node's cache, never into another's
BUNDLE_CACHE = "bundle-cache"


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


def _ray_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment a local node's `ray start` runs in: no cluster address or token of the caller, auth off, one
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
                  temp_dir: Path | None = None, cwd: Path | None = None,
                  resources: dict[str, float] | None = None) -> Iterator[tuple[str, int]]:
    """A real Ray head node (`ray start --head --block`, dashboard on loopback) in its own process group, killed
    as a group at the end so that the session's other Ray instances are left alone (`ray stop` would stop every
    Ray on the machine). Yields (dashboard address, GCS port). `env` is added to this process's environment
    (e.g. RAY_AUTH_MODE=token and its token path); ``ready_on_http_error``: a dashboard that answers with an
    HTTP error (an auth refusal) counts as up. `temp_dir` and `cwd`: the node's own temp and working directories
    (temp_dir None: a new one under /tmp, removed at the end; never Ray's default /tmp/ray, where `ray start`
    records the machine's "current cluster", which a plain ray.init() or `prefmine serve` without an address
    elsewhere on the machine would then join); `resources`: custom resources the head advertises."""
    own_temp = temp_dir is None
    if own_temp:
        temp_dir = Path(tempfile.mkdtemp(prefix="pm-head-", dir="/tmp"))  # short: Ray's socket paths live in it
    dash, gcs, client, *node = free_ports(7)
    ports = ["--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
             *_node_ports(node)]
    where = ["--temp-dir", str(temp_dir)]
    where += ["--resources", json.dumps(resources)] if resources else []
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
        # `ray start` recorded this head as its temp dir's current cluster; `ray stop` would remove the record, a
        # group kill does not, and a later ray.init() reading it would try to join the dead head
        current = Path(temp_dir) / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)


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
                           json.dumps(resources), "--temp-dir", str(temp_dir), *_node_ports()],
                          {**self.env, CACHE_ENV: str(cwd / BUNDLE_CACHE)}, cwd)
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
                env: dict[str, str] | None = None,
                head_resources: dict[str, float] | None = None) -> Iterator[RayCluster]:
    """A real multi-node Ray cluster on this machine: `ray_head_node` (its own temp and working directories) plus
    one `ray start --address` node per (num_cpus, custom resources) in `workers`, each with its own temp and
    working directories (Ray allows a temp dir per node: `--temp-dir` "can be specified per node") and bundle cache
    (`BUNDLE_CACHE` in its working directory). `env` goes
    to every node (what a real node has in its environment, e.g. object store credentials); `head_resources`:
    custom resources the head advertises. Every node is
    stopped by its own process group at the end, the head last; nothing else on the machine is touched."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "head").mkdir(exist_ok=True)
    head_tmp = Path(tempfile.mkdtemp(prefix="pm-head-", dir="/tmp"))
    cluster = None
    try:
        with ray_head_node(num_cpus=head_cpus, env={**(env or {}), CACHE_ENV: str(base / "head" / BUNDLE_CACHE)},
                           temp_dir=head_tmp, cwd=base / "head",
                           resources=head_resources) as (address, gcs):
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
    from moto.server import ThreadedMotoServer

    from prefmine.storage import resolve

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = f"?endpoint_override={host}:{port}&scheme=http"
        fs, _ = resolve(f"s3://{bucket}{options}&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield f"s3://{bucket}/{prefix}{options}"
    finally:
        server.stop()
