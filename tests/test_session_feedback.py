"""Same-session feedback, in process: the history serving scores is the bundle's plus the user's newer events in
the feedback log plus the request's recent events (prefmine.serving.history.with_session), read with one query
on the user's index of a real store (SQLite file and the session's PostgreSQL), and a store that fails to answer
costs the request only those events. The impression log's `arm` column, and its migration, are here too. The
live path (RecordFeedback, then the next Recommend over gRPC) is in tests/test_serve_loop.py."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from prefmine.data.dataset import EVENTS
from prefmine.feedback import FeedbackEvent, Impression, open_feedback_store
from prefmine.serving.history import History, history_end, logged_events, with_session
from prefmine.v1 import recommender_pb2 as pb

CATALOGUE = {"a": 0, "b": 1, "c": 2, "d": 3}.get


def row(n: int, item: str, event: str, ts: int) -> tuple:
    """A feedback-log row as `recent_for_user` returns it: (id, user, item, event, ts, rating)."""
    return (n, "u", item, event, ts, None)


def test_logged_events_newer_than_the_bundle_follow_it_with_the_request_in_time_order():
    bundle = History.of([7, 8], [EVENTS.index("view"), EVENTS.index("buy")], [100.0, 200.0])
    stored = [row(1, "a", "click", 150),  # older than the bundle's history: the bundle has it already
              row(2, "b", "click", 300), row(3, "zz-new-item", "click", 310), row(4, "c", "cart", 400),
              row(5, "d", "no-such-event", 500)]
    recent = [SimpleNamespace(item_id="c", type=pb.EVENT_TYPE_CART, timestamp=400),  # the stored cart, sent again
              SimpleNamespace(item_id="a", type=pb.EVENT_TYPE_VIEW, timestamp=350),
              SimpleNamespace(item_id="d", type=pb.EVENT_TYPE_BUY, timestamp=300)]
    got = with_session(bundle, stored, recent, CATALOGUE)
    assert got.items.tolist() == [7, 8, 1, 3, 0, 2]  # ts 300 (log first on the tie), 300, 350, 400 once
    assert [EVENTS[e] for e in got.events[2:]] == ["click", "buy", "view", "cart"]
    assert got.times.tolist() == [100.0, 200.0, 300.0, 300.0, 350.0, 400.0]
    assert with_session(bundle, (), (), CATALOGUE) is bundle
    # the request's own repeats are kept (a data set may hold an event twice; evaluation scores it so)
    twice = [SimpleNamespace(item_id="a", type=pb.EVENT_TYPE_VIEW, timestamp=350)] * 2
    assert with_session(bundle, (), twice, CATALOGUE).items.tolist() == [7, 8, 0, 0]


def test_a_user_the_bundle_does_not_know_gets_every_logged_event():
    empty = History.of([])
    assert history_end(empty) is None and history_end(History.of([3, 4])) is None  # no known times
    assert history_end(History.of([3, 4], None, [5.0, np.nan])) == 5
    got = with_session(empty, [row(2, "b", "click", 20), row(1, "a", "view", 10)], (), CATALOGUE)
    assert got.items.tolist() == [0, 1] and [EVENTS[e] for e in got.events] == ["view", "click"]


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def test_recent_for_user_after_a_time_is_one_query_on_the_user_index(location):
    store = open_feedback_store(location)
    try:
        store.append([FeedbackEvent(user=u, item=f"{u}-{n}", event="click", ts=1_000 + n)
                      for n in range(6) for u in ("alice", "bob")])
        assert [r[2] for r in store.recent_for_user("alice", 50, 1_002)] == ["alice-3", "alice-4", "alice-5"]
        assert [r[2] for r in store.recent_for_user("alice", 2, 1_002)] == ["alice-4", "alice-5"]  # the newest
        assert [r[2] for r in store.recent_for_user("alice", 50)] == [f"alice-{n}" for n in range(6)]
        assert store.recent_for_user("alice", 50, 1_005) == [] and store.recent_for_user("carol", 50, 0) == []
        assert plan(store, location).count("feedback_user") == 1
    finally:
        store.close()


def plan(store, location: str) -> str:
    """How the backend runs serving's query (the planner's own words), with sequential scans discouraged on
    PostgreSQL so that a table this small still shows whether the index can serve the query."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            conn.execute("SET enable_seqscan = off")
            rows = conn.execute('EXPLAIN SELECT id, "user", item, event, ts, rating FROM feedback WHERE "user" = '
                                "%s AND ts > %s ORDER BY id DESC LIMIT %s", ("alice", 1_002, 50)).fetchall()
        return "\n".join(r[0] for r in rows)
    rows = store._db.execute("EXPLAIN QUERY PLAN SELECT id, user, item, event, ts, rating FROM feedback WHERE "
                             "user = ? AND ts > ? ORDER BY id DESC LIMIT ?", ("alice", 1_002, 50)).fetchall()
    text = "\n".join(str(r[-1]) for r in rows)
    assert "TEMP B-TREE" not in text  # the index gives the newest first: no sort
    return text


def test_a_store_that_fails_to_answer_leaves_the_bundle_history(tmp_path, caplog):
    store = open_feedback_store(tmp_path / "feedback.sqlite")
    store.append([FeedbackEvent(user="u", item="a", event="click", ts=10)])
    assert [r[2] for r in logged_events(store, "u", None)] == ["a"]
    store.close()  # a closed connection: every query raises
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert logged_events(store, "u", None) is None
    assert "feedback log not read" in caplog.text


def impression(arm: str = "") -> Impression:
    return Impression(impression_id=str(uuid.uuid4()), user="u1", ts=1_700_000_000, items=["a"], positions=[0],
                      propensities=[1.0], policy="greedy", bundle_version="v1", arm=arm)


OLD_SQLITE_IMPRESSIONS = """
CREATE TABLE impressions (seq INTEGER PRIMARY KEY AUTOINCREMENT, impression_id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL, ts INTEGER NOT NULL, items TEXT NOT NULL, positions TEXT NOT NULL,
    propensities TEXT NOT NULL, policy TEXT NOT NULL, bundle_version TEXT NOT NULL, received REAL NOT NULL);
INSERT INTO impressions (impression_id, user, ts, items, positions, propensities, policy, bundle_version, received)
    VALUES ('old-impression', 'u0', 1600000000, '["x"]', '[0]', '[1.0]', 'greedy', 'v0', 1.0);
"""


def test_impressions_log_their_arm_and_a_store_from_before_arms_is_migrated(location):
    """An impression keeps its arm; a store whose impressions table predates arms opens (create=False too), its
    old impressions read with arm '' (served without an experiment), and takes new ones with their arm."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(
                'CREATE TABLE impressions (impression_id TEXT PRIMARY KEY, seq BIGINT GENERATED ALWAYS AS IDENTITY '
                'UNIQUE, "user" TEXT NOT NULL, ts BIGINT NOT NULL, items JSONB NOT NULL, positions JSONB NOT NULL, '
                "propensities JSONB NOT NULL, policy TEXT NOT NULL, bundle_version TEXT NOT NULL, "
                "received DOUBLE PRECISION NOT NULL)")
            conn.execute('INSERT INTO impressions (impression_id, "user", ts, items, positions, propensities, policy, '
                         "bundle_version, received) VALUES ('old-impression', 'u0', 1600000000, '[\"x\"]', '[0]', "
                         "'[1.0]', 'greedy', 'v0', 1.0)")
    else:
        with sqlite3.connect(location) as db:
            db.executescript(OLD_SQLITE_IMPRESSIONS)
    store = open_feedback_store(location)
    try:
        new = impression(arm="treatment")
        store.append_impression(new)
        got = {i.impression_id: i for i in store.read_impressions_since(0)}
        assert got["old-impression"].arm == "" and got["old-impression"].items == ["x"]
        assert got[new.impression_id].arm == "treatment"
    finally:
        store.close()
    again = open_feedback_store(location, create=False)  # a current store opens unchanged
    try:
        assert [i.arm for i in again.read_impressions_since(0)] == ["", "treatment"]
    finally:
        again.close()
