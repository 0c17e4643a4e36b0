"""Erasure reaches a running server: `prefmine data forget` on the data, feedback store and bundles a live
`prefmine serve` uses, and within a minute (the ingress re-reads the tombstone list every few seconds) the person
has no profile, no new feedback is stored for them, and Recommend answers them like an unknown user. The same
walk on both feedback backends: SQLite (the tombstone list a file beside it) and PostgreSQL (the list a table of
the same database, which every ingress replica on every node reads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import grpc
import pytest
from live_server import ROOT, UNKNOWN_USER, start_server
from live_server import raw_user_ids as _raw_user_ids
from test_serve import _now

from prefmine.bundle import Bundle
from prefmine.feedback import FeedbackLog, open_feedback_store
from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

EFFECT_WITHIN_S = 60.0


def _code(call, *args) -> grpc.StatusCode:
    try:
        call(*args, timeout=30)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_forget_reaches_a_live_server_within_a_minute(backend, magazine5, tiny_bundle, tmp_path, monkeypatch,
                                                      request):
    monkeypatch.delenv("PREFMINE_TOMBSTONES", raising=False)  # the default: beside the server's feedback store
    data = tmp_path / "data"
    shutil.copytree(magazine5, data)
    bundle_dir = tmp_path / "bundles" / "v1"
    shutil.copytree(tiny_bundle, bundle_dir, symlinks=True)
    if backend == "postgres":
        feedback = request.getfixturevalue("postgres_server").new_database()
        tombstones = feedback  # the default beside a PostgreSQL store: a table of the same database
    else:
        feedback = tmp_path / "feedback.sqlite"
        tombstones = str(feedback.resolve()) + ".tombstones"
    bundle = Bundle.load(bundle_dir)
    known = [u for u in dict.fromkeys(_raw_user_ids(bundle)) if len(bundle.history(bundle.pseudonymise(u)))]
    person, other = known[0], known[1]
    online_only = "shopper-known-only-from-feedback"

    sp = start_server(bundle_dir, None, feedback)  # insecure: no API key (auth is tests/test_serve_auth.py's)
    try:
        with grpc.insecure_channel(sp.addr) as ch:
            stub = pb_grpc.RecommenderStub(ch)
            cold = stub.Recommend(pb.RecommendRequest(user_id=UNKNOWN_USER, k=10), timeout=30)
            assert cold.cold_start
            before = stub.Recommend(pb.RecommendRequest(user_id=person, k=10), timeout=30)
            assert not before.cold_start and [i.item_id for i in before.items] != [i.item_id for i in cold.items]
            assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id=person), timeout=30).known
            for who in (person, online_only):
                ack = stub.RecordFeedback(pb.RecordFeedbackRequest(events=[pb.Event(
                    user_id=who, item_id=before.items[0].item_id, type=pb.EVENT_TYPE_CLICK, timestamp=_now())]),
                    timeout=30)
                assert ack.stored == 1

            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "forget", "--data", str(data),
                                "--user", "-", "--feedback", str(feedback), "--bundle", str(tmp_path / "bundles")],
                               cwd=ROOT, capture_output=True, text=True, timeout=300,
                               input=f"{person}\n{online_only}\n")
            forget_s = time.monotonic() - t0
            assert r.returncode == 0, r.stderr
            report = json.loads(r.stdout)
            assert report["tombstones"] == tombstones
            assert [p["rows_removed"]["feedback"] for p in report["people"]] == [1, 1]
            assert report["people"][0]["bundles_marked"] == [str(bundle_dir)]

            profile_code = grpc.StatusCode.OK
            while profile_code == grpc.StatusCode.OK and time.monotonic() - t0 < EFFECT_WITHIN_S:
                profile_code = _code(stub.GetUserProfile, pb.GetUserProfileRequest(user_id=person))
                if profile_code == grpc.StatusCode.OK:
                    time.sleep(0.2)
            effect_s = time.monotonic() - t0
            print(f"\nforget command {forget_s:.2f} s; GetUserProfile NOT_FOUND {effect_s:.2f} s after it started")
            assert profile_code == grpc.StatusCode.NOT_FOUND, f"still answered after {effect_s:.0f} s"

            for who in (person, online_only):
                with pytest.raises(grpc.RpcError) as e:
                    stub.RecordFeedback(pb.RecordFeedbackRequest(events=[pb.Event(
                        user_id=who, item_id=before.items[0].item_id, type=pb.EVENT_TYPE_VIEW,
                        timestamp=_now())]), timeout=30)
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "events[0].user_id" in e.value.details()
            after = stub.Recommend(pb.RecommendRequest(user_id=person, k=10), timeout=30)
            assert after.cold_start
            assert [(i.item_id, i.score) for i in after.items] == [(i.item_id, i.score) for i in cold.items]
            # everyone else is served as before
            assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id=other), timeout=30).known
            assert not stub.Recommend(pb.RecommendRequest(user_id=other, k=10), timeout=30).cold_start
    finally:
        assert sp.stop() == 0, "".join(sp.lines[-40:])
    log = open_feedback_store(feedback, create=False)
    pseudo = bundle.pseudonymise
    assert log.count(pseudo(person)) == 0 and log.count(pseudo(online_only)) == 0  # nothing slipped in after
    shown = {imp.impression_id: imp.user for imp in log.read_impressions_since(0)}
    assert shown[after.impression_id] == ""  # the answer after erasure is logged without their pseudonym
    assert pseudo(person) not in shown.values()  # forget erased their earlier impressions too
    log.close()


@pytest.mark.slow
def test_policy_update_leaves_erased_people_out(tiny_bundle, ray_session, tmp_path):
    """The incremental policy update neither learns from an erased person's feedback nor copies their history
    from the serving bundle into the next version (the tombstone list beside the feedback store)."""
    import pandas as pd

    from cluster.update_policy import UpdateConfig, update_policy
    from prefmine.data.tombstones import TombstoneList
    from prefmine.feedback import FeedbackEvent

    hist = pd.read_parquet(tiny_bundle / "catalog" / "histories.parquet")
    gone, kept = str(hist["user"].iloc[0]), str(hist["user"].iloc[1])
    items = pd.read_parquet(tiny_bundle / "catalog" / "items.parquet")["item"].astype(str).tolist()
    feedback = tmp_path / "feedback.sqlite"
    log = FeedbackLog(feedback)
    log.append([FeedbackEvent(gone, items[0], "click", 1_700_000_000),
                FeedbackEvent(kept, items[1], "click", 1_700_000_001)])
    log.close()
    TombstoneList(tmp_path / "feedback.sqlite.tombstones").add([gone])
    s = update_policy(tiny_bundle, feedback, tmp_path / "v2", UpdateConfig(max_iterations=0), verbose=False)
    assert s["updated"] and s["erased_users_dropped"] == 1 and s["counts"]["interactions"] == 1
    users = set(pd.read_parquet(tmp_path / "v2" / "catalog" / "histories.parquet")["user"])
    assert gone not in users and kept in users and len(users) == len(hist) - 1
