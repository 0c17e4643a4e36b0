"""The served app bench.closed_loop drives: `prefmine serve`'s code path in a subprocess with its own local Ray
(`Server`), a ModelInfo watcher that times when each version is first answered (`VersionWatch`), and the rollout
figures the server's log and ModelInfo give (`rollout_seconds`, `wait_version`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import ROOT

READY_TIMEOUT_S = 600


def child_env() -> dict[str, str]:
    """This tree first on the path, no cluster address (every child starts its own local Ray), one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFMINE_API_KEYS_FILE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


class Server:
    """`run_serve` (the `prefmine serve` code path) in its own session with its own local Ray."""

    def __init__(self, bundle: Path, keys: Path, feedback: Path, experiment: Path, log: Path):
        from serve.run import free_port

        self.port = free_port()
        code = (f"import sys; from serve.run import run_serve; sys.exit(run_serve({str(bundle)!r}, {self.port}, "
                f"address='local', api_keys_file={str(keys)!r}, feedback_db={str(feedback)!r}, rate_limit=0, "
                f"experiment={str(experiment)!r}))")
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=child_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = log

    def wait_ready(self) -> float:
        t0 = time.monotonic()
        while "prefmine serve: ready" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() - t0 > READY_TIMEOUT_S:
                self.stop()
                raise SystemExit("error: the server did not get ready:\n" + self.log_path.read_text()[-3000:])
            time.sleep(1)
        return time.monotonic() - t0

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to the whole session if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of its Ray, and nothing else
        except ProcessLookupError:
            pass
        self.log.close()


class VersionWatch:
    """ModelInfo every 0.25 s: when each version was first reported. While a round runs it also watches the
    versions directory: once the candidate is renamed into place (built, about to be judged and rolled in) the
    client threads stop resting between sessions, so the guard and the rollout are timed under full traffic."""

    def __init__(self, addr: str, api_key: str, bundles: Path):
        self.addr, self.api_key, self.bundles = addr, api_key, bundles
        self.seen: dict[str, float] = {}
        self.known = {p.name for p in bundles.iterdir()}
        self.traffic = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def expect_candidate(self, traffic) -> None:
        self.known = {p.name for p in self.bundles.iterdir()}
        self.traffic = traffic

    def first_seen(self, version: str) -> float | None:
        return self.seen.get(version)

    def _run(self) -> None:
        from prefmine.v1 import recommender_pb2 as pb
        from serve.client import connect

        with connect(self.addr, api_key=self.api_key) as (stub, md):
            while not self.stop_event.wait(0.25):
                try:
                    v = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10, metadata=md).bundle_version
                    self.seen.setdefault(v, time.time())
                except Exception:  # noqa: BLE001 - asked again in 0.25 s
                    pass
                t = self.traffic
                if t is not None and any(not p.name.startswith(".") and p.name not in self.known
                                         for p in self.bundles.iterdir()):
                    t.paced, self.traffic = False, None

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


def rollout_seconds(serve_log: Path, version: str) -> float | None:
    """How long the server said rolling `version` in took (its "rolled out bundle V ... in X s" line)."""
    import re

    found = re.findall(rf"rolled out bundle {re.escape(version)} .* in ([0-9.]+) s", serve_log.read_text())
    return float(found[-1]) if found else None


def wait_version(addr: str, api_key: str, version: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
    from serve.client import model_info

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if model_info(addr, timeout=30.0, api_key=api_key).bundle_version == version:
                return True
        except Exception:  # noqa: BLE001 - ModelInfo is asked again until the timeout
            pass
        time.sleep(0.5)
    return False
