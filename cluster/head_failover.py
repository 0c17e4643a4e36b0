"""Head failure drill: Ray's GCS fault tolerance with an external Redis, under gRPC client load.

Without it the GCS keeps the cluster's state in memory and fate-shares with the head: lose it and every Serve
application is gone. With ``RAY_REDIS_ADDRESS`` set on the head (and the Redis password given to ``ray start``)
the GCS writes its tables to Redis; a restarted GCS reloads them, the raylets, the Serve controller, proxies and
replicas reconnect, and the replicas never stop answering, because a running actor does not need the GCS.

`Drill.run` measures exactly that on a live cluster: clients call Recommend through each target (Serve's proxy
and the ingress replica's direct port) at a steady pace; the head's ``gcs_server`` process is SIGKILLed, left
down for `outage_s`, and started again with its own command line and environment (what a supervisor such as
KubeRay's head restart does), and the drill reports, per target and phase (before, outage, after), the
requests, the failed ones and their status codes, and how long after the restart a new driver saw the Serve
application RUNNING again. The pieces (`start_redis`, `start_head`) are also what tests/test_head_failover.py
and bench/head_failover.py start, on loopback only, with Ray's token authentication and a Redis password.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class FailoverConfig:
    """Timings of one drill, in seconds; `request_interval_s` is each client's pause between calls."""

    warmup_s: float = 8.0
    outage_s: float = 15.0
    settle_s: float = 10.0
    request_interval_s: float = 0.05
    request_timeout_s: float = 5.0
    recover_timeout_s: float = 180.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def start_redis(workdir: Path, port: int, password: str) -> subprocess.Popen:
    """redis-server on 127.0.0.1:`port` with a password and an fsync-always append-only file in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
                             "--dir", str(workdir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                             "--protected-mode", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def up() -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                return b"+PONG" in s.recv(100)
        except OSError:
            return False

    _wait(up, 30, "redis-server answering PING", proc)
    return proc


@dataclass
class Head:
    proc: subprocess.Popen
    gcs_port: int
    env: dict

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


def start_head(workdir: Path, redis_port: int, redis_password: str, extra_env: dict | None = None,
               num_cpus: int = 4) -> Head:
    """`ray start --head --block` on loopback with GCS fault tolerance (Redis at 127.0.0.1:`redis_port`) and
    Ray token auth (a fresh token in `workdir`), in its own process group; its own temp dir."""
    token = workdir / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    gcs = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
           "RAY_gcs_rpc_server_reconnect_timeout_s": "300", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    ports = ["--port", str(gcs), "--ray-client-server-port", str(free_port()), "--node-manager-port",
             str(free_port()), "--object-manager-port", str(free_port()), "--dashboard-agent-listen-port",
             str(free_port()), "--metrics-export-port", str(free_port())]
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--redis-password", redis_password, "--redis-username", "default",
                             "--temp-dir", str(workdir / "ray"), "--disable-usage-stats", *ports],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    head = Head(proc, gcs, {k: v for k, v in env.items() if k != "RAY_REDIS_ADDRESS"} | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"})
    _wait(lambda: gcs_pid(gcs) is not None, 120, "the head's gcs_server", proc)
    return head


def stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, the process group of `proc` (a `ray start --block` or a server)."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_head(head: Head | None) -> None:
    """Stop the head's process group and a gcs_server a drill restarted outside it."""
    if head is None:
        return
    stop_group(head.proc)
    for _ in range(10):
        pid = gcs_pid(head.gcs_port)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)


def gcs_pid(gcs_port: int) -> int | None:
    """Pid of the gcs_server listening for `gcs_port`'s cluster, or None."""
    out = subprocess.run(["pgrep", "-f", f"gcs_server .*--gcs_server_port={gcs_port}( |$)"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def serve_status(address: str, env: dict, app: str = "prefmine", timeout: float = 60) -> str | None:
    """The Serve application's status seen by a new driver (None: no answer), as a client would check it."""
    code = (f"import ray, logging; ray.init(address={address!r}, logging_level=logging.ERROR); "
            f"from ray import serve; print(serve.status().applications[{app!r}].status)")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


def serve_on(head: Head, bundle: Path, port: int, direct_port: int, feedback_db: Path) -> subprocess.Popen:
    """`run_serve` connected to `head` (not a Ray of its own), in its own process group: Serve's proxy on
    `port`, the ingress replica's direct port on `direct_port`, on loopback and without API keys (a drill)."""
    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; from serve.run import run_serve; sys.exit(run_serve({str(bundle)!r}, {port}, "
            f"address={head.address!r}, direct_port={direct_port}, insecure=True, "
            f"feedback_db={str(feedback_db)!r}, rate_limit=0))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, start_new_session=True,
                            env={**head.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def answers(target: str, metadata: tuple = ()) -> bool:
    """Whether Recommend through `target` ("host:port") returns a full slate within 5 s."""
    import grpc

    from prefmine.v1 import recommender_pb2 as pb
    from prefmine.v1 import recommender_pb2_grpc as pbg

    with grpc.insecure_channel(target) as channel:
        try:
            r = pbg.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id="probe", k=5), timeout=5,
                                                       metadata=metadata)
            return len(r.items) == 5
        except grpc.RpcError:
            return False


class Drill:
    """Kill and restart the head's GCS under Recommend load; see the module docstring."""

    def __init__(self, head: Head, targets: dict[str, tuple[str, tuple]], cfg: FailoverConfig | None = None):
        self.head, self.targets, self.cfg = head, targets, cfg or FailoverConfig()
        self._log: dict[str, list[tuple[float, float, str]]] = {name: [] for name in targets}
        self._stop = threading.Event()

    def _client(self, name: str, target: str, metadata: tuple) -> None:
        import grpc

        from prefmine.v1 import recommender_pb2 as pb
        from prefmine.v1 import recommender_pb2_grpc as pbg

        with grpc.insecure_channel(target) as channel:
            stub = pbg.RecommenderStub(channel)
            i = 0
            while not self._stop.is_set():
                t = time.time()
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id=f"drill-user-{i % 50}", k=5),
                                       timeout=self.cfg.request_timeout_s, metadata=metadata)
                    code = "OK" if len(r.items) == 5 else "SHORT"
                except grpc.RpcError as e:
                    code = e.code().name
                self._log[name].append((t, time.time() - t, code))
                i += 1
                time.sleep(self.cfg.request_interval_s)

    def run(self) -> dict:
        cfg = self.cfg
        threads = [threading.Thread(target=self._client, args=(n, t, md), daemon=True)
                   for n, (t, md) in self.targets.items()]
        for t in threads:
            t.start()
        time.sleep(cfg.warmup_s)
        pid = gcs_pid(self.head.gcs_port)
        if pid is None:
            raise RuntimeError("no gcs_server to kill")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        time.sleep(cfg.outage_s)
        t_restart = time.time()
        subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        recovered = None
        while time.time() - t_restart < cfg.recover_timeout_s:
            if serve_status(self.head.address, self.head.env) == "RUNNING":
                recovered = time.time() - t_restart
                break
            time.sleep(1)
        time.sleep(cfg.settle_s)
        self._stop.set()
        for t in threads:
            t.join(timeout=cfg.request_timeout_s + 5)
        out: dict = {"outage_s": round(t_restart - t_kill, 2),
                     "serve_running_after_restart_s": None if recovered is None else round(recovered, 2),
                     "targets": {}}
        for name, rows in self._log.items():
            phases: dict[str, dict] = {p: {"requests": 0, "failed": 0, "codes": {}, "max_latency_s": 0.0}
                                       for p in ("before", "outage", "after")}
            for t, dt, code in rows:
                p = phases["before" if t < t_kill else "outage" if t < t_restart else "after"]
                p["requests"] += 1
                p["failed"] += code != "OK"
                p["codes"][code] = p["codes"].get(code, 0) + 1
                p["max_latency_s"] = max(p["max_latency_s"], round(dt, 3))
            out["targets"][name] = phases
        return out
