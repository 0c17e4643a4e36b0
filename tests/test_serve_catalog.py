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


def test_an_upserted_category_of_a_bundle_item_reaches_the_filters_at_once(server_proc, bundle_path):
    """A bundle item upserted with a new category is answered by a category filter within seconds, without a new
    bundle (prefmine.serving.new_items.with_updates); its old categories are written back at the end."""
    from prefmine.bundle import Bundle
    from prefmine.rules import ItemAttributes

    bundle = Bundle.load(bundle_path)
    item = str(bundle.item_ids[3])
    old = sorted(ItemAttributes.from_items(bundle.items).categories[3])
    only_new = pb.Rules(categories=["Live Category Test"])
    with grpc.insecure_channel(server_proc.addr) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        def filtered() -> list[str]:
            return [it.item_id for it in stub.Recommend(pb.RecommendRequest(
                user_id="catalog-test-category-user", k=K, rules=only_new), timeout=30, metadata=KEY).items]

        assert filtered() == []  # no item has the category yet
        t0 = write(server_proc, [{"item": item, "categories": ["Live Category Test"]}], {item}, "catalog-test-cat")
        try:
            while (got := filtered()) != [item]:
                assert not got or got == [item], got
                assert time.monotonic() - t0 < 30, "an upserted category was not filtered on 30 s after its write"
                time.sleep(0.1)
            print(f"write-to-filtered latency {time.monotonic() - t0:.2f} s")
        finally:
            t1 = write(server_proc, [{"item": item, "categories": old}], {item}, "catalog-test-cat-restore")
        while filtered():
            assert time.monotonic() - t1 < 30, "the restored categories were not served 30 s after their write"
            time.sleep(0.1)


def test_content_items_are_mixed_in_by_quota_and_decayed_by_age(server_proc, bundle_path):
    """Content live: a user's two first items are upserted as articles published now. A Recommend with
    `kind_quota {article: 1}` holds exactly one of them, the better; once that one is re-published a year ago, a
    one-day `freshness_half_life_s` makes the other the article of the slate. Both items are retired and upserted
    again at the end, which gives them back the bundle's fields."""
    from prefmine.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    user = next(u for u in raw_user_ids(bundle) if len(bundle.history(bundle.pseudonymise(u))) > 0)
    with grpc.insecure_channel(server_proc.addr) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        def slate(**rules) -> list[str]:
            return [it.item_id for it in stub.Recommend(pb.RecommendRequest(
                user_id=user, k=K, rules=pb.Rules(**rules)), timeout=30, metadata=KEY).items]

        before = slate()
        pair = before[:2]
        now = time.time()
        t0 = write(server_proc, [{"item": i, "kind": "article", "published": now} for i in pair], set(pair),
                   "content-test")
        try:
            while len(articles := [i for i in slate(kind_quota={"article": 1}) if i in pair]) != 1:
                assert time.monotonic() - t0 < 30, "the upserted kinds were not served 30 s after their write"
                time.sleep(0.1)
            (better,) = articles
            other = next(i for i in pair if i != better)
            write(server_proc, [{"item": better, "published": now - 365 * 86400}], {better}, "content-test-age")
            t1 = time.monotonic()
            while True:
                decayed = slate(kind_quota={"article": 1}, freshness_half_life_s=86400.0)
                if [i for i in decayed if i in pair] == [other]:
                    break
                assert time.monotonic() - t1 < 30, f"the year-old article was not decayed: {decayed}"
                time.sleep(0.1)
            assert len(decayed) == K
            assert [i for i in slate(kind_quota={"article": 1}) if i in pair] == [better]  # no decay asked
        finally:
            write(server_proc, [{"item": i, "op": "retire"} for i in pair], set(pair), "content-test-retire")
            t2 = write(server_proc, [{"item": i, "available": True} for i in pair], set(pair), "content-test-restore")
        while slate() != before:
            assert time.monotonic() - t2 < 30, "the items were not served as before 30 s after their restore"
            time.sleep(0.1)


def test_write_catalog_rpc_scope_rows_and_retry(server_proc):
    """WriteCatalog over gRPC: a key without the RPC in its scope is refused; bad rows are named and good rows
    stored (readable in the store when the answer comes); a retry with the same key stores nothing new. The rows
    name items the bundle does not hold, so the session's answers are unchanged."""
    from serve.auth import add_key

    keys = server_proc.feedback_db.parent / "api_keys"  # tests/conftest.py server_proc: keys_file_for(base / ...)
    writer, reader = add_key(keys, "catalog-writer", "WriteCatalog"), add_key(keys, "catalog-reader", "Recommend")
    rows = [pb.CatalogRow(item_id="catalog-test-new-1", title="Catalogue test item", brand="Acme",
                          categories=["Tests"], price=4.5, available=True, kind="article", published=1.7e9,
                          description="Written over gRPC with its description"),
            pb.CatalogRow(item_id="catalog-test-new-2"),  # new, no title
            pb.CatalogRow(item_id="catalog-test-new-3", title="x", price=-1.0),
            pb.CatalogRow(item_id="catalog-test-gone", retire=True),
            pb.CatalogRow(item_id="catalog-test-new-4", title="x", published=-1.0)]
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
    assert [(e.index, e.item_id) for e in resp.refused] == [(1, "catalog-test-new-2"), (2, "catalog-test-new-3"),
                                                             (4, "catalog-test-new-4")]
    assert "title is required" in resp.refused[0].reason and "price" in resp.refused[1].reason
    assert "published" in resp.refused[2].reason
    store = open_feedback_store(str(server_proc.feedback_db), create=False)
    try:
        log = [c for c in store.read_catalog_since(0) if c.item.startswith("catalog-test-")]
    finally:
        store.close()
    assert [(c.item, c.op) for c in log] == [("catalog-test-new-1", "upsert"), ("catalog-test-gone", "retire")]
    assert log[0].fields == {"title": "Catalogue test item", "brand": "Acme", "categories": ["Tests"], "price": 4.5,
                             "available": True, "kind": "article", "published": 1.7e9,
                             "description": "Written over gRPC with its description"} and log[-1].id == resp.last_id
    # the new item is served from now on (test_new_item_is_served_within_a_minute): retired, so the session's other
    # tests see the bundle's catalogue
    write(server_proc, [{"item": "catalog-test-new-1", "op": "retire"}], set(), "catalog-rpc-test-cleanup")


def test_new_item_is_served_within_a_minute(server_proc, bundle_path):
    """A new item (an id the bundle does not hold) written to the catalogue is served without a new bundle: its
    fields copy a cold bundle item's (one without train interactions, whose ranker vector also comes from its
    text alone). Recommend ranks it through the ranker (the rules path, in ranker order, and the policy's slate)
    within a minute, and every other item keeps its place; its publication time drives the freshness rule;
    a cold start's slate holds it in its new-item slot (the popular items before it unchanged); Rank scores it
    (for a cold start, with the median item's popularity share); SimilarItems of the item it copies returns it;
    Search for its title finds it; a category filter keeps it or drops it; retiring it removes it from every
    answer, Rank's included."""
    import numpy as np
    import torch

    from prefmine.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    warm = torch.load(bundle_path / "ranker" / "model.pt", weights_only=True)["warm"][1:].numpy() > 0
    cold = np.flatnonzero(~warm)
    assert len(cold), "the tiny bundle has no cold item (items met only in validation or test)"
    c = int(cold[0])
    item = bundle.items.iloc[c]
    copied, new = str(bundle.item_ids[c]), "catalog-test-new-copy"
    cats = [str(x) for x in item["categories"]]
    fields = {"title": str(item["title"]), "brand": str(item["brand"] or ""), "categories": cats,
              "published": time.time() - 30 * 86400}  # a month old
    other = next(x for cs in bundle.items["categories"] for x in cs if x not in cats)  # a category it lacks
    user = next(u for u in raw_user_ids(bundle) if len(bundle.history(bundle.pseudonymise(u))) > 0)
    k_all = bundle.n_items + 1
    with grpc.insecure_channel(server_proc.addr) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        def ranked(**rules) -> list[str]:  # every item the user may get, in the ranker's order (rules path)
            return [it.item_id for it in stub.Recommend(pb.RecommendRequest(
                user_id=user, k=k_all, rules=pb.Rules(**rules)), timeout=30, metadata=KEY).items]

        def searched(**rules) -> list[str]:
            request = pb.SearchRequest(user_id=user, query=fields["title"], k=5)
            if rules:
                request.rules.CopyFrom(pb.Rules(**rules))
            return [r.item_id for r in stub.Search(request, timeout=30, metadata=KEY).results]

        def cold_start(k: int = K) -> list:
            return list(stub.Recommend(pb.RecommendRequest(user_id="catalog-test-cold-user", k=k, explain=True),
                                       timeout=30, metadata=KEY).items)

        def rank(u: str) -> pb.RankResponse:
            return stub.Rank(pb.RankRequest(user_id=u, candidate_item_ids=[new, *map(str, bundle.item_ids[:3])]),
                             timeout=30, metadata=KEY)

        before, cold_before = ranked(), [it.item_id for it in cold_start()]
        assert new not in before and new not in cold_before and list(rank(user).unknown_item_ids) == [new]
        t0 = write(server_proc, [{"item": new, **fields}], set(), "catalog-test-new-item")
        try:
            while new not in (after := ranked()):
                assert time.monotonic() - t0 < 60, "a new item was not recommendable 60 s after its write"
                time.sleep(0.2)
            print(f"write-to-recommendable latency {time.monotonic() - t0:.2f} s")
            assert [i for i in after if i != new] == before  # placed by its score; no other item moved
            slate = [it.item_id for it in stub.Recommend(pb.RecommendRequest(user_id=user, k=k_all), timeout=30,
                                                         metadata=KEY).items]
            assert new in slate  # the policy's slate path too
            similar = [it.item_id for it in stub.SimilarItems(pb.SimilarItemsRequest(item_id=copied, k=3),
                                                              timeout=30, metadata=KEY).items]
            assert new in similar, similar
            assert new in searched()
            assert new in ranked(categories=[cats[-1]]) and new not in ranked(categories=[other])
            assert new not in searched(categories=[other])
            boost = {f"item:{new}": 100.0}  # first by far; a month of one-hour half-lives sinks it to the last place
            assert ranked(boosts=boost)[0] == new and ranked(boosts=boost, freshness_half_life_s=3600.0)[-1] == new
            cold = cold_start()  # one new-item slot (LiveCatalogConfig.cold_start_new_slots), popularity the rest
            assert [it.item_id for it in cold] == cold_before[:K - 1] + [new]
            assert cold[-1].reason == "new in the catalogue" and cold[-1].score <= cold[-2].score
            warm_rank, cold_rank = rank(user), rank("catalog-test-cold-user")
            assert not warm_rank.unknown_item_ids and not cold_rank.unknown_item_ids and cold_rank.cold_start
            p_warm = {it.item_id: it.click_probability for it in warm_rank.items}
            p_cold = {it.item_id: it.click_probability for it in cold_rank.items}
            assert 0 < p_warm[new] < 1
            assert p_cold[new] == pytest.approx(np.median(bundle.popularity) / bundle.popularity.sum())
        finally:
            t1 = write(server_proc, [{"item": new, "op": "retire"}], set(), "catalog-test-new-item-retire")
        while new in ranked() or new in searched():
            assert time.monotonic() - t1 < 30, "a retired new item was still shown 30 s after its write"
            time.sleep(0.1)
        for _ in range(4):  # and stays gone (replicas answer in turn)
            assert new not in ranked() and new not in [it.item_id for it in cold_start()]
            assert list(rank(user).unknown_item_ids) == [new]


def test_a_learned_slate_policy_reads_new_items(bundle_path):
    """The ranker deployment's slate policy with new items among the candidates (serve.new_items.extended_policy,
    no Ray): the bundle's learned policy reads per-item features by index, so a new item's index fails it; the
    extended policy gives new items their features (no popularity, their ranker vector) and selects a slate."""
    import numpy as np

    from prefmine.bundle import Bundle
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.serving.new_items import NewItems
    from prefmine.serving.policy import PolicyVersion
    from serve.new_items import extended_policy

    n = Bundle.load(bundle_path).n_items
    policy, ranker = PolicyVersion(str(bundle_path)), RankerRuntime(bundle_path)
    assert policy.runtime is not None
    new = NewItems(n, ("new-a",), ({"title": "a"},), ("a",), np.zeros((1, 1), np.float32),
                   2 * ranker.item_vectors[:1], "d")
    state = ranker.user_states([np.arange(3)])[0]
    cands = np.array([n, *range(3, 30)])
    scores = np.linspace(2.0, 1.0, len(cands))
    with pytest.raises(IndexError):
        policy.select(state, cands, scores, 5, policy="learned")
    slate = extended_policy(policy, new).select(state, cands, scores, 5, policy="learned")
    assert len(slate) == 5 and set(slate) <= set(cands.tolist())
    assert len(policy.runtime._unit) == n  # the bundle's policy is left as it was
