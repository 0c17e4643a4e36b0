"""RecordFeedback durability: an acknowledged event survives the whole server being killed (SIGKILL of the
driver, Ray's GCS and raylet and every replica, no shutdown code runs), and a restarted server serves it.

Its own server (the module-scoped one of test_serve.py keeps running for the other tests), with a fresh feedback
database: acknowledge events over gRPC, kill everything at once, read the SQLite file as the policy update job
would (prefmine.feedback.FeedbackLog), restart a server on the same file and see the events in GetUserProfile.
"""

from __future__ import annotations

import time

import grpc
import pytest
from live_server import API_KEY, keys_file_for, start_server

from prefmine.feedback import FeedbackLog
from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

USER = "durability-test-user"


@pytest.mark.slow
def test_acknowledged_feedback_survives_kill_and_restart(bundle_path, tmp_path):
    keys = keys_file_for(tmp_path / "keys")
    db = tmp_path / "feedback.sqlite"
    md = (("x-api-key", API_KEY),)
    now = int(time.time())
    kinds = [pb.EVENT_TYPE_VIEW, pb.EVENT_TYPE_CLICK, pb.EVENT_TYPE_CART, pb.EVENT_TYPE_BUY]
    acked: list[tuple[str, str]] = []

    first = start_server(bundle_path, keys, db)
    try:
        with grpc.insecure_channel(first.addr) as ch:
            stub = pb_grpc.RecommenderStub(ch)
            for batch in range(10):
                events = [pb.Event(user_id=USER, item_id=f"item-{batch}-{n}", type=kinds[n % 4], timestamp=now)
                          for n in range(20)]
                ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=events), timeout=30, metadata=md)
                assert ack.stored == 20
                acked += [(e.item_id, ("view", "click", "cart", "buy")[n % 4]) for n, e in enumerate(events)]
    finally:
        first.kill()  # right after the last acknowledgement, no graceful shutdown

    log = FeedbackLog(db, create=False)  # what the policy update job reads
    rows = log.read_since(0)
    log.close()
    assert [(r[2], r[3]) for r in rows] == acked

    second = start_server(bundle_path, keys, db)
    try:
        with grpc.insecure_channel(second.addr) as ch:
            stub = pb_grpc.RecommenderStub(ch)
            prof = stub.GetUserProfile(pb.GetUserProfileRequest(user_id=USER), timeout=30, metadata=md)
            assert dict(prof.feedback_counts) == {"view": 50, "click": 50, "cart": 50, "buy": 50}
            ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=[pb.Event(
                user_id=USER, item_id="after-restart", type=pb.EVENT_TYPE_VIEW, timestamp=now)]),
                timeout=30, metadata=md)
            assert ack.last_id == len(acked) + 1  # the log continues where it was
    finally:
        assert second.stop() == 0
