"""The server under load: a replica killed, a new bundle version rolled in, while clients keep calling.

Each test has its own server (tests/test_serve.py's start_server: `run_serve` in a subprocess with its own Ray)
and eight client threads calling Recommend for known users in a loop (``Load``).

* Fault: the ranker replica's process (Ray names it ``ServeReplica:prefmine:RankerDeployment``) is killed with
  SIGKILL mid-load; the load goes on until the controller's replacement has answered for a while. The ingress
  retries a call whose replica died (serve.app.RecommenderIngress._call), so no client request may fail; the
  test prints the requests during the outage, the slowest answer and the time to recover.
* Rollout: the server's ``--bundle`` is a symlink; it is pointed at a second version and the server gets SIGHUP
  (serve.run.rollout). No request may fail, every answer names one of the two versions, none after the switch
  the old one, ModelInfo reports the new version, and no replica was restarted (a lightweight update).
* Refused rollout: the same with a version whose ranker weights are garbage (it passes the checks, it does not
  load): refused by the replicas, the old version answers throughout, then a good version goes in normally.
"""

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


@pytest.mark.slow
def test_killing_a_ranker_replica_under_load_fails_no_request(bundle_path, tmp_path):
    users = known_users(bundle_path)
    sp = start_server(bundle_path, _keys(tmp_path), tmp_path / "feedback.sqlite")
    try:
        (victim,) = replica_pids(sp.proc.pid, RANKER_TITLE)
        with Load(sp.addr, users) as load:
            time.sleep(5)  # steady state first
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replacement, t_up = None, None
            while time.monotonic() - t_kill < 120:
                pids = [p for p in replica_pids(sp.proc.pid, RANKER_TITLE) if p != victim]
                if pids:
                    replacement = pids[0]
                    break
                time.sleep(0.2)
            assert replacement, "no replacement ranker replica within 120 s:\n" + "".join(sp.lines[-40:])
            # the replacement is up once a request that started after it appeared has succeeded, then more load
            t_seen = time.monotonic()
            while time.monotonic() - t_seen < 60:
                with load.lock:
                    done = [c for c in load.calls if c[0] > t_seen and c[2]]
                if len(done) >= 20:
                    t_up = min(c[1] for c in done)
                    break
                time.sleep(0.2)
            time.sleep(3)
        calls = load.calls
        failed = [c for c in calls if not c[2]]
        during = [c for c in calls if c[0] <= (t_up or t_kill) and c[1] >= t_kill]
        slowest = max((c[1] - c[0] for c in during), default=0.0)
        print(f"replica kill: {len(calls)} requests, {len(failed)} failed "
              f"({sorted({c[3] for c in failed})}), {len(during)} in flight or sent during the outage, slowest "
              f"{slowest:.2f} s; replacement process after {t_seen - t_kill:.1f} s, answering after "
              f"{(t_up - t_kill) if t_up else float('nan'):.1f} s")
        assert t_up is not None, "the replacement never answered"
        assert not failed, f"{len(failed)} of {len(calls)} requests failed: {sorted({c[3] for c in failed})}"
        assert victim not in _session_pids(sp.proc.pid)
    finally:
        assert sp.stop() == 0, "".join(sp.lines[-40:])


@pytest.mark.slow
def test_rollout_of_a_new_bundle_version_under_load_fails_no_request(bundle_path, tmp_path):

    from test_serve import replicas_started

    from serve.client import model_info

    dirs, names = bundle_versions(bundle_path, tmp_path / "bundles", {"old": "", "new": "-next"})
    (old_dir, new_dir), (old_version, new_version) = dirs.values(), names.values()
    current = tmp_path / "current"
    current.symlink_to(old_dir)
    users = known_users(bundle_path)

    sp = start_server(current, _keys(tmp_path), tmp_path / "feedback.sqlite")
    try:
        replicas_before = replicas_started(sp)
        with Load(sp.addr, users) as load:
            time.sleep(5)
            flip = tmp_path / "current.next"
            flip.symlink_to(new_dir)
            os.replace(flip, current)  # atomic: the server sees the old or the new version, never neither
            t_hup = time.monotonic()
            sp.proc.send_signal(signal.SIGHUP)
            while not any("prefmine serve: rolled out" in x or "rollout of" in x for x in sp.lines):
                assert time.monotonic() - t_hup < 300, "no rollout within 300 s:\n" + "".join(sp.lines[-40:])
                time.sleep(0.2)
            t_done = time.monotonic()
            time.sleep(5)
        line = next(x for x in sp.lines if "prefmine serve: rolled out" in x or "rollout of" in x)
        print(line.strip())
        assert "rolled out bundle " + new_version in line
        calls = load.calls
        failed = [c for c in calls if not c[2]]
        during = [c for c in calls if c[1] >= t_hup and c[0] <= t_done]
        print(f"rollout: {len(calls)} requests, {len(failed)} failed, {len(during)} during the {t_done - t_hup:.1f} s "
              f"switch (p50 {_latency_ms(during, 50):.0f} ms, p99 {_latency_ms(during, 99):.0f} ms; before: p50 "
              f"{_latency_ms([c for c in calls if c[1] < t_hup], 50):.0f} ms); answered by the new version "
              f"{sum(c[4] == new_version for c in during)} of them")
        assert not failed, f"{len(failed)} of {len(calls)} requests failed: {sorted({c[3] for c in failed})}"
        assert {c[4] for c in calls} == {old_version, new_version}
        assert all(c[4] == new_version for c in calls if c[0] > t_done), "the old version answered after the switch"
        assert model_info(sp.addr, timeout=30, api_key=API_KEY).bundle_version == new_version
        assert replicas_started(sp) == replicas_before, "the rollout restarted replicas"
    finally:
        assert sp.stop() == 0, "".join(sp.lines[-40:])


@pytest.mark.slow
def test_rollout_of_a_version_that_does_not_load_is_refused_and_the_old_one_serves_on(bundle_path, tmp_path):
    """A version that passes the checks but whose ranker weights are garbage, rolled in under load: the ranker
    replicas refuse it (serve.served.adopt), the ingress does not switch (it waits for every part to load the
    version first), no request fails, none is answered by the broken version, no replica is restarted, and the
    server says the rollout failed and what still serves. A good version rolled in afterwards then goes in
    normally (the config was rolled back, nothing is stuck)."""

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

    def roll_to(name: str, marker_count: int) -> str:
        flip = tmp_path / "current.next"
        flip.symlink_to(dirs[name])
        os.replace(flip, current)
        t0 = time.monotonic()
        sp.proc.send_signal(signal.SIGHUP)
        while True:
            done = [x for x in sp.lines if "prefmine serve: rolled out" in x or "rollout of" in x]
            if len(done) > marker_count:
                return done[-1].strip()
            assert time.monotonic() - t0 < 300, "no rollout outcome within 300 s:\n" + "".join(sp.lines[-40:])
            time.sleep(0.2)

    sp = start_server(current, _keys(tmp_path), tmp_path / "feedback.sqlite")
    try:
        replicas_before = replicas_started(sp)
        with Load(sp.addr, users) as load:
            time.sleep(5)
            refused = roll_to("broken", 0)
            t_refused = time.monotonic()
            time.sleep(5)
            assert model_info(sp.addr, timeout=30, api_key=API_KEY).bundle_version == old_version
            good = roll_to("v2", 1)
            t_good = time.monotonic()
            time.sleep(3)
        print(refused)
        print(good)
        assert "rollout of" in refused and "still serving" in refused and f"ModelInfo: {old_version}" in refused
        assert "rolled out bundle " + names["v2"] in good
        calls = load.calls
        failed = [c for c in calls if not c[2]]
        print(f"refused rollout: {len(calls)} requests, {len(failed)} failed, "
              f"{sum(1 for c in calls if c[0] <= t_refused)} before the refusal was reported")
        assert not failed, f"{len(failed)} of {len(calls)} requests failed: {sorted({c[3] for c in failed})}"
        assert names["broken"] not in {c[4] for c in calls}
        assert {c[4] for c in calls if c[1] < t_refused} == {old_version}
        assert all(c[4] == names["v2"] for c in calls if c[0] > t_good)
        assert replicas_started(sp) == replicas_before, "a replica was restarted"
    finally:
        assert sp.stop() == 0, "".join(sp.lines[-40:])
