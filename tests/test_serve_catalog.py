"""The live catalogue over gRPC, on the session's served app (`server_proc`): items retired (or made unavailable)
in the feedback store's catalogue log leave every Recommend, Search and SimilarItems answer within about a
second, before the top k (k items still come back), and come back when upserted again, which the test does
last so the other tests see the bundle's catalogue. The writes go through the bulk path's store call
(prefmine.catalog); the library side is tests/test_catalog.py."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest
from live_server import API_KEY, raw_user_ids

from prefmine.catalog import validate_rows
from prefmine.feedback import open_feedback_store
from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

KEY = [("x-api-key", API_KEY)]
K = 5


def write(server_proc, rows: list[dict], known: set[str], key: str) -> float:
    """Log catalogue rows in the served app's store; the time of the acknowledged write (time.monotonic)."""
    good, bad = validate_rows(rows, known=known)
    assert not bad
    store = open_feedback_store(str(server_proc.feedback_db), create=False)
    try:
        store.append_catalog(good, idempotency_key=key)
        return time.monotonic()
    finally:
        store.close()


def test_retired_and_unavailable_items_leave_every_answer_at_once(server_proc, bundle_path):
    from prefmine.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    users = [u for u in raw_user_ids(bundle) if len(bundle.history(bundle.pseudonymise(u))) > 0][:25]
    users += ["catalog-test-new-user"]  # a cold start: popularity
    query = next(t for t in bundle.titles if t)
    with grpc.insecure_channel(server_proc.addr) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        def answers() -> dict[str, list[str]]:
            out = {}
            for u in users:
                out[f"rec:{u}"] = [it.item_id for it in stub.Recommend(
                    pb.RecommendRequest(user_id=u, k=K), timeout=30, metadata=KEY).items]
                out[f"search:{u}"] = [r.item_id for r in stub.Search(
                    pb.SearchRequest(user_id=u, query=query, k=K), timeout=30, metadata=KEY).results]
            for item in bundle.item_ids[:15]:
                out[f"similar:{item}"] = [it.item_id for it in stub.SimilarItems(
                    pb.SimilarItemsRequest(item_id=str(item), k=K), timeout=30, metadata=KEY).items]
            return out

        before = answers()
        recommended = Counter(i for name, got in before.items() if name.startswith("rec:") for i in got)
        retired = recommended.most_common(1)[0][0]  # the item Recommend leans on most
        shown = Counter(i for got in before.values() for i in got if i != retired)
        unavailable = shown.most_common(1)[0][0]  # the most shown of the others (any RPC)
        assert recommended[retired] >= 2 and shown[unavailable] >= 2
        probe = next(u for u in users if retired in before[f"rec:{u}"])
        known = {retired, unavailable}

        def recommended_to_probe() -> list[str]:
            return [it.item_id for it in stub.Recommend(pb.RecommendRequest(user_id=probe, k=K), timeout=30,
                                                        metadata=KEY).items]

        t0 = write(server_proc, [{"item": retired, "op": "retire"}, {"item": unavailable, "available": False}],
                   known, "catalog-test-retire")
        try:
            while retired in recommended_to_probe():
                assert time.monotonic() - t0 < 30, "a retired item was still recommended 30 s after its write"
                time.sleep(0.1)
            print(f"write-to-gone latency {time.monotonic() - t0:.2f} s")
            after = answers()  # every user, every RPC: neither item, and k items whenever k were there before
            for name, got in after.items():
                assert retired not in got and unavailable not in got, name
                assert len(got) == len(before[name]), name
        finally:  # the bundle's catalogue back for the session's other tests: both items upserted, available
            t1 = write(server_proc, [{"item": retired, "available": True}, {"item": unavailable, "available": True}],
                       known, "catalog-test-restore")
        while retired not in recommended_to_probe():  # a re-upserted item is recommendable again
            assert time.monotonic() - t1 < 30, "an item upserted again was not recommended 30 s after its write"
            time.sleep(0.1)


def test_write_catalog_rpc_scope_rows_and_retry(server_proc):
    """WriteCatalog over gRPC: a key without the RPC in its scope is refused; bad rows are named and good rows
    stored (readable in the store when the answer comes); a retry with the same key stores nothing new. The rows
    name items the bundle does not hold, so the session's answers are unchanged."""
    from serve.auth import add_key

    keys = server_proc.feedback_db.parent / "api_keys"  # tests/conftest.py server_proc: keys_file_for(base / ...)
    writer, reader = add_key(keys, "catalog-writer", "WriteCatalog"), add_key(keys, "catalog-reader", "Recommend")
    rows = [pb.CatalogRow(item_id="catalog-test-new-1", title="Catalogue test item", brand="Acme",
                          categories=["Tests"], price=4.5, available=True, kind="product"),
            pb.CatalogRow(item_id="catalog-test-new-2"),  # new, no title
            pb.CatalogRow(item_id="catalog-test-new-3", title="x", price=-1.0),
            pb.CatalogRow(item_id="catalog-test-gone", retire=True)]
    request = pb.WriteCatalogRequest(rows=rows, idempotency_key="catalog-rpc-test-1")
    with grpc.insecure_channel(server_proc.addr) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        t0 = time.monotonic()
        while True:  # the key file is re-read while serving
            try:
                resp = stub.WriteCatalog(request, timeout=30, metadata=[("x-api-key", writer)])
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() - t0 < 10, e
                time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as denied:
            stub.WriteCatalog(request, timeout=30, metadata=[("x-api-key", reader)])
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        again = stub.WriteCatalog(request, timeout=30, metadata=[("x-api-key", writer)])
    assert resp.stored == 2 and again == resp
    assert [(e.index, e.item_id) for e in resp.refused] == [(1, "catalog-test-new-2"), (2, "catalog-test-new-3")]
    assert "title is required" in resp.refused[0].reason and "price" in resp.refused[1].reason
    store = open_feedback_store(str(server_proc.feedback_db), create=False)
    try:
        log = [c for c in store.read_catalog_since(0) if c.item.startswith("catalog-test-")]
    finally:
        store.close()
    assert [(c.item, c.op) for c in log] == [("catalog-test-new-1", "upsert"), ("catalog-test-gone", "retire")]
    assert log[0].fields == {"title": "Catalogue test item", "brand": "Acme", "categories": ["Tests"], "price": 4.5,
                             "available": True, "kind": "product"} and log[-1].id == resp.last_id
