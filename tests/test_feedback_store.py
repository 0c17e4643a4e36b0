"""The feedback store on both backends: a SQLite file and a real PostgreSQL server (the session `postgres_server`,
one new database per test). The same tests run on each: append/read/count/forget, an idempotent retry stored
once, two OS processes appending at once, and an acknowledged append surviving a kill -9 of its writer; for
PostgreSQL also an immediate stop of the server (no shutdown checkpoint: recovery from the WAL).

Writers are separate Python processes running WRITER below; each prints `[key, last_id]` once its append has
returned, i.e. once the store acknowledged it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from prefmine.feedback import (
    FeedbackEvent,
    FeedbackStore,
    IdempotencyConflict,
    open_feedback_store,
)

ROOT = Path(__file__).resolve().parents[1]

WRITER = r"""
import itertools, json, sys, time
from prefmine.feedback import FeedbackEvent, open_feedback_store
loc, name, batches, size, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
store = open_feedback_store(loc)
print(json.dumps(["ready", 0]), flush=True)
paced = sys.argv[6:] == ["wait"]
if paced:
    sys.stdin.readline()  # the start signal: both writers begin together
for b in (range(batches) if batches else itertools.count()):
    for key in ([f"shared-{b}"] if shared else []) + [f"{name}-{b}"]:
        events = [FeedbackEvent(user=f"u{b % 7}", item=f"{key}/{j}", event="click", ts=1_700_000_000 + b)
                  for j in range(size)]
        print(json.dumps([key, store.append(events, idempotency_key=key)]), flush=True)
        if paced:
            time.sleep(0.002)  # requests arrive spaced, so the other writer gets its turns (SQLite is not fair)
store.close()
"""


def start_writer(location: str, name: str, batches: int, size: int, shared: bool,
                 wait: bool = False) -> subprocess.Popen:
    """A writer process; with wait, it appends only once a line arrives on its stdin, and paces its appends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, location, name, str(batches), str(size),
                             "1" if shared else "0", *(["wait"] if wait else [])],
                            stdin=subprocess.PIPE if wait else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def read_acks(lines) -> dict[str, int]:
    acks = {}
    for line in lines:
        key, last = json.loads(line)
        if key != "ready":
            acks[key] = last
    return acks


def run_until_acked(proc: subprocess.Popen, n: int) -> list[str]:
    """Lines of `proc` until it has acknowledged n appends (fails if it exits first)."""
    lines = []
    while len(lines) < n + 1:  # + "ready"
        line = proc.stdout.readline()
        assert line, f"writer exited early: {proc.stderr.read()[-2000:]}"
        lines.append(line)
    return lines


def finish(proc: subprocess.Popen) -> str:
    """The rest of a killed writer's output (read through the same buffered reader as run_until_acked)."""
    out = proc.stdout.read()
    proc.stderr.read()
    proc.wait(timeout=30)
    return out


def batches_by_key(rows: list[tuple]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(row[2].split("/")[0], []).append(row)
    return out


def check_acknowledged(location: str, acks: dict[str, int], size: int) -> int:
    """Every acknowledged batch is stored whole with the id it was acknowledged with; every other batch present
    (the one in flight at the crash) is whole too. Returns the number of stored batches."""
    store = open_feedback_store(location, create=False)
    try:
        rows = store.read_since(0)
        assert store.count() == len(rows)
    finally:
        store.close()
    stored = batches_by_key(rows)
    missing = sorted(set(acks) - set(stored))
    assert not missing, f"acknowledged batches lost: {missing[:5]} (of {len(acks)})"
    for key, batch in stored.items():
        assert len(batch) == size, f"batch {key} stored partly: {len(batch)} of {size} rows"
        if key in acks:
            assert max(r[0] for r in batch) == acks[key]
    assert len(set(stored) - set(acks)) <= 1  # at most the append in flight when the writer died
    return len(stored)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    """Where a fresh store lives: a SQLite path, or the DSN of a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def events_of(user: str, kinds: list[str], ts: int = 1_700_000_000) -> list[FeedbackEvent]:
    return [FeedbackEvent(user=user, item=f"{user}-item{j}", event=k, ts=ts + j, rating=4.0 if k == "rate" else None)
            for j, k in enumerate(kinds)]


def test_append_read_count_forget(location):
    with pytest.raises(FileNotFoundError):
        open_feedback_store(location, create=False)  # nothing there yet: not created by a reader
    store = open_feedback_store(location)
    assert isinstance(store, FeedbackStore)
    assert store.count() == 0 and store.read_since(0) == []
    first = store.append(events_of("alice", ["view", "click", "rate"]))
    last = store.append(events_of("bob", ["buy", "view"]))
    assert last == first + 2
    rows = store.read_since(0)
    assert [r[1] for r in rows] == ["alice"] * 3 + ["bob"] * 2
    assert [r[0] for r in rows] == sorted({r[0] for r in rows})
    assert rows[2][1:] == ("alice", "alice-item2", "rate", 1_700_000_002, 4.0)
    assert rows[0][5] is None
    assert [r[1] for r in store.read_since(first)] == ["bob", "bob"]
    assert len(store.read_since(0, limit=2)) == 2
    assert store.count() == 5 and store.count("alice") == 3 and store.count("carol") == 0
    assert store.counts_by_event("alice") == {"view": 1, "click": 1, "rate": 1}
    assert [r[2:4] for r in store.recent_for_user("alice", limit=2)] == [("alice-item1", "click"),
                                                                          ("alice-item2", "rate")]
    assert [r[0] for r in store.recent_for_user("alice")] == [r[0] for r in rows[:3]]
    assert store.recent_for_user("carol") == []
    assert store.append([]) == last  # nothing to store: the last id
    assert store.forget("alice") == 3
    assert store.forget("alice") == 0
    assert store.count() == 2 and store.count("alice") == 0 and store.counts_by_event("alice") == {}
    assert store.recent_for_user("alice") == []
    store.close()

    reopened = open_feedback_store(location, create=False)
    try:
        assert [r[1] for r in reopened.read_since(0)] == ["bob", "bob"]
        assert reopened.append(events_of("carol", ["view"])) > last  # ids keep increasing after a forget
    finally:
        reopened.close()


def test_idempotent_retry_is_stored_once(location):
    store = open_feedback_store(location)
    other = open_feedback_store(location)  # another replica, same log
    try:
        batch = events_of("alice", ["view", "click"])
        last = store.append(batch, idempotency_key="req-1")
        assert store.append(batch, idempotency_key="req-1") == last
        assert other.append(batch, idempotency_key="req-1") == last  # the retry reached another replica
        assert store.count() == 2
        with pytest.raises(IdempotencyConflict, match="idempotency_key 'req-1'"):
            other.append(events_of("alice", ["buy"]), idempotency_key="req-1")
        assert store.count() == 2
        assert store.append(batch, idempotency_key="req-2") == last + 2  # a new request with equal events
        store.append(batch)
        store.append(batch, idempotency_key="")  # no key: every call stores
        assert store.count() == 8
        for bad in ("   ", "k" * 257):
            with pytest.raises(ValueError, match="idempotency_key"):
                store.append(batch, idempotency_key=bad)
        assert store.count() == 8
    finally:
        store.close()
        other.close()


def test_two_processes_append_concurrently(location):
    """Two writer processes, each its own batches plus the same `shared-*` batches (a client retrying on two
    replicas at once): nothing lost, nothing stored twice, and both get the same id for a shared batch."""
    open_feedback_store(location).close()  # schema first, so both start appending at once
    batches, size = 40, 4
    procs = [start_writer(location, f"w{i}", batches, size, shared=True, wait=True) for i in range(2)]
    for p in procs:
        assert json.loads(p.stdout.readline()) == ["ready", 0], p.stderr.read()[-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait(timeout=120) == 0, err[-2000:]
        outs.append(out)
    acks = [read_acks(out.splitlines()) for out in outs]
    for b in range(batches):
        assert acks[0][f"shared-{b}"] == acks[1][f"shared-{b}"]
    store = open_feedback_store(location, create=False)
    try:
        rows = store.read_since(0)
        assert store.count() == len(rows) == 3 * batches * size
    finally:
        store.close()
    assert len({r[2] for r in rows}) == len(rows)  # no item stored twice
    assert [r[0] for r in rows] == sorted({r[0] for r in rows})
    writer_of = [r[2][:2] for r in rows if r[2].startswith("w")]
    switches = sum(a != b for a, b in zip(writer_of, writer_of[1:]))
    assert switches >= 10, f"the two writers barely overlapped ({switches} switches)"
    stored = batches_by_key(rows)
    assert set(stored) == set(acks[0]) | set(acks[1])
    for key, batch in stored.items():
        assert max(r[0] for r in batch) == {**acks[0], **acks[1]}[key]


def test_acknowledged_append_survives_writer_kill9(location):
    open_feedback_store(location).close()
    size = 3
    proc = start_writer(location, "k", 0, size, shared=False)
    try:
        lines = run_until_acked(proc, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = finish(proc)
    assert proc.returncode == -signal.SIGKILL
    acks = read_acks(lines + out.splitlines())  # everything it printed was acknowledged
    assert check_acknowledged(location, acks, size) >= 30
    if not location.startswith("postgresql://"):
        with sqlite3.connect(location) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_acknowledged_append_survives_postgres_crash(postgres_server):
    """`pg_ctl stop -m immediate` while a writer appends: no checkpoint, the restarted server recovers from its
    WAL, and every acknowledged batch is there (the server's WAL writer sleeps 10 s, so only commits that flushed
    their WAL themselves survive). A store opened before the crash keeps working after the restart."""
    location = postgres_server.new_database()
    survivor = open_feedback_store(location)  # a replica that stays up across the database's restart
    size = 3
    proc = start_writer(location, "c", 0, size, shared=False)
    try:
        lines = run_until_acked(proc, 30)
        postgres_server.stop("immediate")
    finally:
        proc.send_signal(signal.SIGKILL)
        out = finish(proc)
        postgres_server.start()
    acks = read_acks(lines + out.splitlines())
    n = check_acknowledged(location, acks, size)
    assert n >= 30
    try:  # its pooled connection died with the server: the pool notices and reconnects, the append succeeds
        survivor.append(events_of("after", ["view"]), idempotency_key="after-restart")
        assert survivor.count() == n * size + 1
    finally:
        survivor.close()


def test_update_job_pages_through_every_event(location):
    """The policy update job's reader (cluster.update_policy.read_events) on either backend: every event after
    the consumed id, in id order, across pages."""
    from cluster.update_policy import read_events

    store = open_feedback_store(location)
    try:
        first = store.append(events_of("alice", ["view", "click", "buy"]))
        store.append(events_of("bob", ["cart", "buy", "rate", "view"]))
        rows = store.read_since(0)
    finally:
        store.close()
    assert read_events(location, 0, page_size=2) == rows
    assert read_events(location, first, page_size=3) == rows[3:]
    assert read_events(location, rows[-1][0]) == []


def test_data_forget_erases_from_either_backend(location, raw_dir, magazine5, tmp_path):
    """`prefmine data forget --feedback LOCATION` with a SQLite path or a PostgreSQL DSN."""
    import gzip
    import shutil

    from prefmine.data.privacy import Pseudonymiser

    data = tmp_path / "data"
    shutil.copytree(magazine5, data)
    with gzip.open(raw_dir / "amazon2018/Magazine_Subscriptions/Magazine_Subscriptions_5.json.gz", "rt") as f:
        person = json.loads(f.readline())["reviewerID"]
    pseudo = Pseudonymiser()  # the key the fixtures prepared with (PREFMINE_PSEUDONYM_KEY)
    me, them = pseudo(person), pseudo(person + "-someone-else")
    store = open_feedback_store(location)
    store.append(events_of(me, ["click", "buy"]) + events_of(them, ["view"]), idempotency_key="r1")
    store.close()

    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "forget", "--data", str(data), "--user", person,
                        "--feedback", location], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["rows_removed"]["feedback"] == 2
    store = open_feedback_store(location, create=False)
    try:
        assert store.count(me) == 0 and store.count(them) == 1 and store.count() == 1
    finally:
        store.close()
    if not location.startswith("postgresql://"):
        assert me.encode() not in Path(location).read_bytes()


def test_record_feedback_validates_the_idempotency_key():
    """RecordFeedback's key is checked before anything is stored: INVALID_ARGUMENT naming the field."""
    import time

    from prefmine.v1 import recommender_pb2 as pb
    from serve.validate import BadRequest, validate_feedback

    ok = pb.Event(user_id="u", item_id="i", type=pb.EVENT_TYPE_CLICK, timestamp=int(time.time()))
    validate_feedback(pb.RecordFeedbackRequest(events=[ok]))  # no key: allowed
    validate_feedback(pb.RecordFeedbackRequest(events=[ok], idempotency_key="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"))
    for bad in ("   ", "k" * 257):
        with pytest.raises(BadRequest, match=r"^idempotency_key "):
            validate_feedback(pb.RecordFeedbackRequest(events=[ok], idempotency_key=bad))
