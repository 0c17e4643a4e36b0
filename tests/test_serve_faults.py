"""The server under load: a broken version rolled in and refused, a good one rolled in, a replica killed, while
clients keep calling.

One server (tests/test_serve.py's start_server: `run_serve` in a subprocess with its own Ray) and eight client
threads calling Recommend for known users in a loop (``Load``) through the whole scenario, so the server's start
and its steady state are paid once. Rollouts: the server's ``--bundle`` is a symlink pointed at another version
before a SIGHUP (serve.run.rollout). The test prints the requests during each event, the latency of the switch
and the time the replacement replica took to answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import bundle_versions
from live_server import API_KEY, keys_file_for, start_server
from live_server import raw_user_ids as _raw_user_ids
from live_server import session_pids as _session_pids

from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

RANKER_TITLE = "ServeReplica:prefmine:RankerDeployment"


def replica_pids(session: int, title: str) -> list[int]:
    """Processes of the server's session whose command line (Ray's process title) names the replica."""
    out = []
    for pid in _session_pids(session):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title in cmd:
            out.append(pid)
    return out


class Load:
    """Client threads calling Recommend until stopped; every answer's (start, end, ok, code) is kept."""

    def __init__(self, addr: str, users: list[str], threads: int = 8):
        self.addr, self.users, self.stop = addr, users, threading.Event()
        self.calls: list[tuple[float, float, bool, str, str]] = []  # start, end, ok, code, bundle version
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w, threads), daemon=True) for w in range(threads)]

    def _run(self, w: int, n: int) -> None:
        with grpc.insecure_channel(self.addr) as ch:
            stub = pb_grpc.RecommenderStub(ch)
            i = w
            while not self.stop.is_set():
                t0 = time.monotonic()
                version = ""
                try:
                    version = stub.Recommend(pb.RecommendRequest(user_id=self.users[i % len(self.users)], k=5),
                                             timeout=30, metadata=(("x-api-key", API_KEY),)).bundle_version
                    ok, code = True, "OK"
                except grpc.RpcError as e:
                    ok, code = False, e.code().name
                with self.lock:
                    self.calls.append((t0, time.monotonic(), ok, code, version))
                i += n

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def known_users(bundle_path, n: int = 50) -> list[str]:
    from prefmine.bundle import Bundle

    b = Bundle.load(bundle_path)
    users: list[str] = []
    for raw in _raw_user_ids(b):
        if raw not in users and len(b.history(b.pseudonymise(raw))):
            users.append(raw)
        if len(users) == n:
            break
    return users


def _keys(tmp_path) -> Path:
    return keys_file_for(tmp_path / "keys")


def _latency_ms(calls, q: float) -> float:
    import numpy as np

    return float(np.percentile([1e3 * (c[1] - c[0]) for c in calls], q)) if calls else float("nan")


def roll_to(sp, current: Path, target: Path) -> str:
    """Point the `current` symlink at `target` atomically (the server sees the old or the new version, never
    neither), send SIGHUP, and return the server's line with the outcome of that rollout."""
    markers = len(_rollout_lines(sp))
    flip = current.with_name(current.name + ".next")
    flip.symlink_to(target)
    os.replace(flip, current)
    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGHUP)
    while len(done := _rollout_lines(sp)) <= markers:
        assert time.monotonic() - t0 < 300, "no rollout outcome within 300 s:\n" + "".join(sp.lines[-40:])
        time.sleep(0.2)
    return done[-1].strip()


def _rollout_lines(sp) -> list[str]:
    return [x for x in sp.lines if "prefmine serve: rolled out" in x or "rollout of" in x]


def kill_a_ranker_replica(sp, load: Load) -> tuple[float, float]:
    """SIGKILL the ranker replica under `load`; wait for the controller's replacement and for 20 requests sent
    after it appeared to succeed. Returns (seconds to the replacement process, seconds to its first answer)."""
    (victim,) = replica_pids(sp.proc.pid, RANKER_TITLE)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replacement = None
    while time.monotonic() - t_kill < 120:
        if pids := [p for p in replica_pids(sp.proc.pid, RANKER_TITLE) if p != victim]:
            replacement = pids[0]
            break
        time.sleep(0.2)
    assert replacement, "no replacement ranker replica within 120 s:\n" + "".join(sp.lines[-40:])
    t_seen = time.monotonic()
    while time.monotonic() - t_seen < 60:
        with load.lock:
            done = [c for c in load.calls if c[0] > t_seen and c[2]]
        if len(done) >= 20:
            assert victim not in _session_pids(sp.proc.pid)
            return t_seen - t_kill, min(c[1] for c in done) - t_kill
        time.sleep(0.2)
    raise AssertionError("the replacement ranker replica never answered:\n" + "".join(sp.lines[-40:]))


@pytest.mark.slow
def test_under_load_a_broken_version_is_refused_a_good_one_rolls_in_and_a_killed_replica_is_replaced(
        bundle_path, tmp_path):
    """One server under eight client threads for the whole scenario, no request may fail:

    1. a version that passes the checks but whose ranker weights are garbage is rolled in: the ranker replicas
       refuse it (serve.served.adopt), the ingress does not switch (it waits for every part to load the version
       first), none is answered by it, and the server says the rollout failed and what still serves;
    2. a good version is then rolled in normally (the config was rolled back, nothing is stuck): every answer
       after the switch names it, ModelInfo reports it, and no replica was restarted (a lightweight update);
    3. the ranker replica is SIGKILLed: the ingress retries calls whose replica died
       (serve.app.RecommenderIngress._call), and the controller's replacement serves the rolled-in version (the
       application's config follows each rollout, so a replica started later loads what is served)."""

    from test_serve import replicas_started

    from prefmine.integrity import seal
    from serve.client import model_info

    dirs, names = bundle_versions(bundle_path, tmp_path / "bundles", {"v1": "", "broken": "-broken", "v2": "-next"})
    old_version = names["v1"]
    weights = dirs["broken"] / "ranker" / "model.pt"
    weights.write_bytes(b"not a torch checkpoint " * (weights.stat().st_size // 23 + 1))
    seal(dirs["broken"])  # sealed as it is: it passes the integrity checks and fails only when loaded
    current = tmp_path / "current"
    current.symlink_to(dirs["v1"])
    users = known_users(bundle_path)

    sp = start_server(current, _keys(tmp_path), tmp_path / "feedback.sqlite")
    try:
        replicas_before = replicas_started(sp)
        with Load(sp.addr, users) as load:
            time.sleep(5)  # steady state first
            refused = roll_to(sp, current, dirs["broken"])
            t_refused = time.monotonic()
            time.sleep(2)
            assert model_info(sp.addr, timeout=30, api_key=API_KEY).bundle_version == old_version
            t_hup = time.monotonic()
            good = roll_to(sp, current, dirs["v2"])
            t_good = time.monotonic()
            time.sleep(2)
            assert model_info(sp.addr, timeout=30, api_key=API_KEY).bundle_version == names["v2"]
            assert replicas_started(sp) == replicas_before, "a rollout restarted a replica"
            to_process, to_answer = kill_a_ranker_replica(sp, load)
            time.sleep(2)
        calls = load.calls
        failed = [c for c in calls if not c[2]]
        switch = [c for c in calls if c[1] >= t_hup and c[0] <= t_good]
        print(refused)
        print(good)
        print(f"{len(calls)} requests, {len(failed)} failed ({sorted({c[3] for c in failed})}); "
              f"{sum(1 for c in calls if c[0] <= t_refused)} before the refusal was reported; {len(switch)} during "
              f"the {t_good - t_hup:.1f} s switch to the good version (p50 {_latency_ms(switch, 50):.0f} ms, p99 "
              f"{_latency_ms(switch, 99):.0f} ms; before: p50 {_latency_ms([c for c in calls if c[1] < t_hup], 50):.0f}"
              f" ms); ranker replica killed: replacement process after {to_process:.1f} s, answering after "
              f"{to_answer:.1f} s")
        assert "rollout of" in refused and "still serving" in refused and f"ModelInfo: {old_version}" in refused
        assert "rolled out bundle " + names["v2"] in good
        assert not failed, f"{len(failed)} of {len(calls)} requests failed: {sorted({c[3] for c in failed})}"
        assert {c[4] for c in calls} == {old_version, names["v2"]}, "the broken version answered"
        assert {c[4] for c in calls if c[1] < t_refused} == {old_version}
        assert all(c[4] == names["v2"] for c in calls if c[0] > t_good), "the old version answered after the switch"
    finally:
        assert sp.stop() == 0, "".join(sp.lines[-40:])
