"""Head failure drill: Ray's GCS fault tolerance with an external Redis, under gRPC client load.

Without it the GCS keeps the cluster's state in memory and fate-shares with the head: lose it and every Serve
application is gone. With ``RAY_REDIS_ADDRESS`` set on the head (and the Redis password given to ``ray start``)
the GCS writes its tables to Redis; a restarted GCS reloads them, the raylets, the Serve controller, proxies and
replicas reconnect, and the replicas never stop answering, because a running actor does not need the GCS.

`Drill.run` measures exactly that on a live cluster: clients call Recommend through each target (Serve's proxy
and the ingress replica's direct port) at a steady pace; the head's ``gcs_server`` process is SIGKILLed, left
down for `outage_s`, and started again with its own command line and environment (what a supervisor such as
KubeRay's head restart does), and the drill reports, per target and phase (before, outage, after), the
requests, the failed ones and their status codes, when calls failed, how long after the restart the GCS
listened again and a new driver saw the Serve application RUNNING again (that driver's own start is part of the
figure; the drill also times one such check before the kill). The pieces (`start_redis`, `start_head`,
`stop_head`) are also what tests/test_head_failover.py and bench/head_failover.py start, on loopback only, with
Ray's token authentication and a Redis password. The head is started detached (see `start_head`) and stopped by
its own processes, never with ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import re
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
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports. Bound all at once before any is released: ports asked for one at a time
    can repeat (the kernel may hand a just-released port out again), and Ray refuses a start where two of its
    components share a port."""
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


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
    """A detached head: `pgid` is the process group `ray start` left its daemons in, `temp_dir` its own temp dir
    (every daemon's command line names it), `env` what a driver needs to join it (address, token; no Redis)."""

    gcs_port: int
    env: dict
    temp_dir: Path
    pgid: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


def start_head(workdir: Path, redis_port: int, redis_password: str, extra_env: dict | None = None,
               num_cpus: int = 4) -> Head:
    """`ray start --head` (detached, no ``--block``) on loopback with GCS fault tolerance (Redis at
    127.0.0.1:`redis_port`, as Ray documents it: ``RAY_REDIS_ADDRESS`` plus ``--redis-password``/``--redis-username``)
    and Ray token auth (a fresh token in `workdir`), in its own process group, temp dir and ports.

    Not ``--block``: a blocking ``ray start`` watches its children and, when one dies, stops the whole head, raylet
    included, so a killed GCS could never be restarted into the same cluster. Detached, only the GCS goes down and
    the raylet waits ``RAY_gcs_rpc_server_reconnect_timeout_s`` for it to return. Stop it with `stop_head`."""
    token = workdir / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    flags = ("--ray-client-server-port", "--node-manager-port", "--object-manager-port", "--dashboard-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port")
    gcs, *others = free_ports(1 + len(flags))
    temp_dir = workdir / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
           "RAY_gcs_rpc_server_reconnect_timeout_s": "300", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    ports = ["--port", str(gcs)]  # every port its own: never Ray's defaults, which another Ray here may hold
    for flag, port in zip(flags, others):
        ports += [flag, str(port)]
    log = workdir / "ray_start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--num-cpus", str(num_cpus),
                                 "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                                 "--redis-password", redis_password, "--redis-username", "default",
                                 "--temp-dir", str(temp_dir), "--disable-usage-stats", *ports],
                                env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    head = Head(gcs, {k: v for k, v in env.items() if k != "RAY_REDIS_ADDRESS"} | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"},
                temp_dir, proc.pid)
    try:
        rc = proc.wait(timeout=180)
        if rc != 0:
            raise RuntimeError(f"ray start --head exited with {rc}:\n{log.read_text()[-3000:]}")
        _wait(lambda: gcs_pid(gcs) is not None, 60, "the head's gcs_server")
    except BaseException:
        proc.kill()
        stop_head(head)
        raise
    return head


def stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, the process group of `proc` (a server started in its own session)."""
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


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every live (not zombie) process readable in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
        if fields[0] not in "ZX":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return table


def head_pids(head: Head) -> set[int]:
    """Every live process of `head` and nothing else: its process group (what ``ray start`` started), any process
    whose command line names its temp dir (a GCS the drill restarted in a session of its own), and all their
    descendants (workers and Serve replicas, whose titles Ray rewrites to ``ray::...``)."""
    table = _process_table()
    marker = re.compile(re.escape(str(head.temp_dir)) + r"(/|\s|$)")
    found = {pid for pid, (_, pgid, cmd) in table.items() if pgid == head.pgid or marker.search(cmd)}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return found - {os.getpid()}


def stop_head(head: Head | None, grace_s: float = 10.0) -> set[int]:
    """Stop every process of `head` (see `head_pids`): SIGTERM, `grace_s` to exit, then SIGKILL, twice over for
    any a dying raylet started meanwhile. Returns the pids still alive after that (empty: all gone); it does not
    raise, so a caller's ``finally`` goes on to stop the rest. Other Ray instances on the machine are never
    touched (no ``ray stop``). Safe to call twice."""
    if head is None:
        return set()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0), (signal.SIGKILL, 10.0)):
        pids = head_pids(head)
        if not pids:
            return set()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + wait_s
        while time.time() < deadline and pids & set(_process_table()):
            time.sleep(0.2)
    return head_pids(head)


def gcs_pid(gcs_port: int) -> int | None:
    """Pid of the gcs_server listening for `gcs_port`'s cluster, or None."""
    out = subprocess.run(["pgrep", "-f", f"gcs_server .*--gcs_server_port={gcs_port}( |$)"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def serve_status(address: str, env: dict, app: str = "prefmine", timeout: float = 60) -> str:
    """The Serve application's status as a new driver sees it, as a client would check it: ``RUNNING``,
    ``DEPLOYING``, ... or ``no answer: <why>`` when the driver could not connect or ask within `timeout`."""
    code = (f"import ray, logging; ray.init(address={address!r}, logging_level=logging.ERROR); "
            f"from ray import serve; s = serve.status().applications[{app!r}].status; "
            f"print('STATUS', getattr(s, 'value', s))")  # an enum whose str() is 'ApplicationStatus.RUNNING'
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"no answer: no status within {timeout:.0f} s"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("STATUS ")]
    if r.returncode == 0 and lines:
        return lines[-1].split(" ", 1)[1].strip()
    why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return f"no answer: {why[:200]}"


def serve_on(head: Head, bundle: Path, port: int, direct_port: int, feedback_db: Path,
             log: Path | None = None) -> subprocess.Popen:
    """`run_serve` connected to `head` (not a Ray of its own), in its own process group: Serve's proxy on
    `port`, the ingress replica's direct port on `direct_port`, on loopback and without API keys (a drill). Its
    output goes to `log` (discarded without one): what to read when it exits before answering."""
    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; from serve.run import run_serve; sys.exit(run_serve({str(bundle)!r}, {port}, "
            f"address={head.address!r}, direct_port={direct_port}, insecure=True, "
            f"feedback_db={str(feedback_db)!r}, rate_limit=0))")
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], cwd=root, start_new_session=True,
                                env={**head.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)},
                                stdout=out, stderr=subprocess.STDOUT)


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
        self.restarted: subprocess.Popen | None = None  # the GCS the drill started again (stop_head stops it)

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
        # The app answers as soon as its ingress is up while other replicas may still be DEPLOYING: wait for
        # RUNNING, since the check after the restart must be able to say RUNNING before it means anything.
        deadline = time.time() + 300
        while True:
            t0 = time.time()
            before = serve_status(self.head.address, self.head.env)
            check_s = time.time() - t0  # what one check costs with the GCS up: the floor of the recovery figure
            if before == "RUNNING":
                break
            if time.time() > deadline:
                raise RuntimeError(f"the Serve application is not RUNNING before the drill: {before}")
            time.sleep(2)
        threads = [threading.Thread(target=self._client, args=(n, t, md), daemon=True)
                   for n, (t, md) in self.targets.items()]
        for t in threads:
            t.start()
        time.sleep(cfg.warmup_s)
        pid = gcs_pid(self.head.gcs_port)
        if pid is None:
            raise RuntimeError("no gcs_server to kill")
        # what a supervisor restarts: the same binary, arguments (port, session, Redis) and environment
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        time.sleep(cfg.outage_s / 2)
        gcs_down = gcs_pid(self.head.gcs_port) is None and not _listening(self.head.gcs_port)
        time.sleep(max(0.0, t_kill + cfg.outage_s - time.time()))
        t_restart = time.time()
        self.restarted = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT)
        listening = None
        while listening is None and time.time() - t_restart < cfg.recover_timeout_s:
            if _listening(self.head.gcs_port):
                listening = time.time() - t_restart
            else:
                time.sleep(0.1)
        recovered, checks, last = None, 0, None
        while time.time() - t_restart < cfg.recover_timeout_s:
            last = serve_status(self.head.address, self.head.env)
            checks += 1
            if last == "RUNNING":
                recovered = time.time() - t_restart
                break
            time.sleep(1)
        time.sleep(cfg.settle_s)
        self._stop.set()
        for t in threads:
            t.join(timeout=cfg.request_timeout_s + 5)
        out: dict = {"outage_s": round(t_restart - t_kill, 2),
                     "gcs_listening_after_restart_s": None if listening is None else round(listening, 2),
                     "serve_running_after_restart_s": None if recovered is None else round(recovered, 2),
                     "status_check_s_before_kill": round(check_s, 2),
                     "gcs_down_mid_outage": gcs_down, "status_checks": checks, "last_status": last, "targets": {}, "failure_window_s": {}}
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
            # seconds after the kill from the first failed call's start to the last one's end (None: none failed)
            failed = [(t, dt) for t, dt, code in rows if code != "OK"]
            out["failure_window_s"][name] = None if not failed else [
                round(failed[0][0] - t_kill, 2), round(max(t + dt for t, dt in failed) - t_kill, 2)]
        return out
