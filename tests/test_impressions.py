"""Logged impressions in the feedback store, on both backends (a SQLite file and the session's real PostgreSQL,
one new database per test): an impression is stored whole and durably, read back in commit order, refused when
malformed or repeated, joined to the feedback events that name it, erased with its user, and a store written
before impressions existed is migrated when opened. The live-server tests are in tests/test_serve.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prefmine.feedback import (
    FeedbackEvent,
    IdempotencyConflict,
    Impression,
    check_impression_id,
    open_feedback_store,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    """Where a fresh store lives: a SQLite path, or the DSN of a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def impression(user: str = "u1", items=("a", "b", "c"), props=(1.0, 0.55, 0.05), **kw) -> Impression:
    return Impression(impression_id=kw.pop("impression_id", str(uuid.uuid4())), user=user, ts=1_700_000_000,
                      items=list(items), positions=list(range(len(items))), propensities=list(props),
                      policy=kw.pop("policy", "learned"), bundle_version=kw.pop("bundle_version", "v7"), **kw)


def test_append_read_join_forget(location):
    store = open_feedback_store(location)
    try:
        first, second = impression("alice"), impression("bob", items=["x"], props=[1.0], policy="popularity")
        s1 = store.append_impression(first)
        s2 = store.append_impression(second)
        assert s2 > s1 > 0
        got = store.read_impressions_since(0)
        assert [g.impression_id for g in got] == [first.impression_id, second.impression_id]
        a = got[0]
        assert (a.user, a.ts, a.items, a.positions, a.propensities, a.policy, a.bundle_version) == (
            "alice", 1_700_000_000, ["a", "b", "c"], [0, 1, 2], [1.0, 0.55, 0.05], "learned", "v7")
        assert a.received > 0 and a.seq == s1
        assert [g.impression_id for g in store.read_impressions_since(s1)] == [second.impression_id]
        assert len(store.read_impressions_since(0, limit=1)) == 1

        # events naming an impression are joined to it; those naming none (or another) are not
        last = store.append([
            FeedbackEvent(user="alice", item="b", event="click", ts=1_700_000_010, impression_id=first.impression_id),
            FeedbackEvent(user="alice", item="zzz", event="view", ts=1_700_000_011),
            FeedbackEvent(user="alice", item="b", event="buy", ts=1_700_000_020, impression_id=first.impression_id),
            FeedbackEvent(user="bob", item="x", event="click", ts=1_700_000_030, impression_id=second.impression_id),
        ])
        joined = store.feedback_for_impressions([first.impression_id, second.impression_id, "no-such-impression"])
        assert [(r[2], r[3]) for r in joined[first.impression_id]] == [("b", "click"), ("b", "buy")]
        assert [r[0] for r in joined[second.impression_id]] == [last]
        assert joined["no-such-impression"] == []
        assert store.feedback_for_impressions([]) == {}
        assert len(store.read_since(0)) == 4  # read_since rows keep their shape: (id, user, item, event, ts, rating)
        assert all(len(r) == 6 for r in store.read_since(0))

        # erasure takes a user's impressions with their events
        assert store.forget("alice") == 3
        assert [g.user for g in store.read_impressions_since(0)] == ["bob"]
        assert store.feedback_for_impressions([first.impression_id]) == {first.impression_id: []}
    finally:
        store.close()


def test_bad_or_repeated_impressions_are_refused(location):
    store = open_feedback_store(location)
    try:
        imp = impression()
        store.append_impression(imp)
        with pytest.raises(ValueError, match="already stored"):
            store.append_impression(impression(impression_id=imp.impression_id, user="other"))
        with pytest.raises(ValueError, match="propensities has 2 entries for 3 items"):
            store.append_impression(impression(props=[1.0, 1.0]))
        with pytest.raises(ValueError, match=r"propensities\[1\] must be in \(0, 1\]"):
            store.append_impression(impression(props=[1.0, 0.0, 0.5]))
        with pytest.raises(ValueError, match="impression_id must be 1..64 characters"):
            store.append_impression(impression(impression_id="has space"))
        got = store.read_impressions_since(0)
        assert [g.impression_id for g in got] == [imp.impression_id] and got[0].user == "u1"
    finally:
        store.close()


def test_idempotency_digest_covers_the_impression_id(location):
    store = open_feedback_store(location)
    try:
        ev = FeedbackEvent(user="u", item="i", event="click", ts=1_700_000_000, impression_id="imp-1")
        last = store.append([ev], idempotency_key="k1")
        assert store.append([ev], idempotency_key="k1") == last  # a retry: stored once
        other = FeedbackEvent(user="u", item="i", event="click", ts=1_700_000_000, impression_id="imp-2")
        with pytest.raises(IdempotencyConflict):
            store.append([other], idempotency_key="k1")
        assert store.count() == 1
    finally:
        store.close()


def test_check_impression_id():
    assert check_impression_id("0f8c-AB-9") == "0f8c-AB-9"
    assert check_impression_id("a" * 64) == "a" * 64
    for bad in ("", "a" * 65, "x_y", "é", "a;DROP", "a b"):
        with pytest.raises(ValueError, match="events\\[2\\].impression_id"):
            check_impression_id(bad, "events[2].impression_id")


WRITER = r"""
import sys, time
from prefmine.feedback import Impression, open_feedback_store
store = open_feedback_store(sys.argv[1])
seq = store.append_impression(Impression(impression_id=sys.argv[2], user="u", ts=1_700_000_000, items=["a", "b"],
                                         positions=[0, 1], propensities=[1.0, 0.5], policy="learned",
                                         bundle_version="v1"))
print(seq, flush=True)
time.sleep(600)
"""


def test_acknowledged_impression_survives_kill9(location):
    """An impression whose append returned is there after its writer is killed (no close, no clean exit)."""
    iid = str(uuid.uuid4())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, location, iid], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.strip(), f"writer failed: {proc.stderr.read()[-2000:]}"
        seq = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = open_feedback_store(location, create=False)
    try:
        got = store.read_impressions_since(0)
        assert [(g.impression_id, g.seq, g.items, g.propensities) for g in got] == [(iid, seq, ["a", "b"], [1.0, 0.5])]
    finally:
        store.close()


OLD_SQLITE = """
CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, item TEXT NOT NULL,
    event TEXT NOT NULL, ts INTEGER NOT NULL, rating REAL, received REAL NOT NULL);
CREATE INDEX feedback_user ON feedback(user);
CREATE TABLE feedback_requests (key TEXT PRIMARY KEY, digest TEXT NOT NULL, last_id INTEGER NOT NULL,
    received REAL NOT NULL);
INSERT INTO feedback(user, item, event, ts, rating, received) VALUES ('old', 'i1', 'rate', 1600000000, 5.0, 1.0);
"""

OLD_POSTGRES = [
    'CREATE TABLE feedback (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "user" TEXT NOT NULL, '
    "item TEXT NOT NULL, event TEXT NOT NULL, ts BIGINT NOT NULL, rating DOUBLE PRECISION, "
    "received DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE feedback_requests (key TEXT PRIMARY KEY, digest TEXT NOT NULL, last_id BIGINT NOT NULL, "
    "received DOUBLE PRECISION NOT NULL)",
    "INSERT INTO feedback (\"user\", item, event, ts, rating, received) VALUES ('old', 'i1', 'rate', 1600000000, "
    "5.0, 1.0)",
]


def test_store_from_before_impressions_is_migrated(location):
    """A store written by the previous schema (no impressions table, no impression_id column) opens, even as
    create=False (the forget command), keeps its rows, and takes impressions and named events."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            for stmt in OLD_POSTGRES:
                conn.execute(stmt)
    else:
        with sqlite3.connect(location) as db:
            db.executescript(OLD_SQLITE)
    store = open_feedback_store(location, create=False)
    try:
        assert store.read_since(0) == [(1, "old", "i1", "rate", 1_600_000_000, 5.0)]
        imp = impression("old")
        store.append_impression(imp)
        store.append([FeedbackEvent(user="old", item="a", event="click", ts=1_700_000_000,
                                    impression_id=imp.impression_id)])
        assert [r[2] for r in store.feedback_for_impressions([imp.impression_id])[imp.impression_id]] == ["a"]
    finally:
        store.close()
    again = open_feedback_store(location)  # opening a current store again changes nothing
    try:
        assert store_summary(again) == (2, 1)
    finally:
        again.close()


def store_summary(store) -> tuple[int, int]:
    return store.count(), len(store.read_impressions_since(0))


def test_impression_lists_are_json(tmp_path):
    """The SQLite columns hold plain JSON, readable by any tool without prefmine."""
    path = tmp_path / "f.sqlite"
    store = open_feedback_store(path)
    try:
        imp = impression(items=["i-1", "i-2"], props=[0.9, 0.1])
        store.append_impression(imp)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        items, positions, props = db.execute("SELECT items, positions, propensities FROM impressions").fetchone()
    assert (json.loads(items), json.loads(positions), json.loads(props)) == (["i-1", "i-2"], [0, 1], [0.9, 0.1])
