"""Request-time rules and hybrid Search over gRPC, on the session's served app (`server_proc`): filters honoured,
pins at their positions, category caps, k items whenever k qualify, a rules slate logged with policy "rules" and
propensity 1.0, bad rules rejected naming the field, and a property test of generated rule sets against the live
Recommend. Search is hybrid (facets, lexical scores) on a bundle with a lexical index and dense on one without
(a bundle trained before the index existed, e.g. PREFMINE_SERVE_TEST_BUNDLE); the tests check whichever the
served bundle is. The Ray-free side is tests/test_request_rules.py."""

from __future__ import annotations

from collections import Counter

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import API_KEY, raw_user_ids

from prefmine.rules import ItemAttributes
from prefmine.v1 import recommender_pb2 as pb

KEY = [("x-api-key", API_KEY)]


@pytest.fixture(scope="module")
def served(bundle_path):
    """The served bundle, its items' attributes, a known user (raw id and history as item indices) and whether
    the bundle has a lexical index."""
    from prefmine.bundle import Bundle
    from prefmine.search.bundle import has_index

    bundle = Bundle.load(bundle_path)
    attrs = ItemAttributes.from_items(bundle.items)
    for raw in raw_user_ids(bundle):
        hist = bundle.history(bundle.pseudonymise(raw))
        if len(hist) > 0:
            return bundle, attrs, raw, {int(i) for i in hist}, has_index(bundle_path)
    pytest.fail("no raw user id of the bundle's data set has a history in the bundle")


def common_category(attrs: ItemAttributes, rank: int = 1) -> str:
    """The catalogue's rank-th most common category (0: the root every item has)."""
    counts = Counter(c for cats in attrs.categories for c in cats)
    return sorted(counts, key=lambda c: (-counts[c], c))[rank]


def idx(attrs: ItemAttributes, items) -> list[int]:
    return [attrs.index(it.item_id) for it in items]


def test_recommend_keeps_the_filters_puts_pins_in_place_and_logs_the_rules_slate(stub, served, server_proc):
    from prefmine.feedback import open_feedback_store

    bundle, attrs, user, seen, _ = served
    cat = common_category(attrs)
    allowed = [j for j in range(len(attrs.item_ids)) if cat in attrs.categories[j] and j not in seen]
    k = 6
    assert len(allowed) > k, "the test needs a category with more than k unseen items"
    pin = allowed[-1]  # the catalogue's last such item: not the ranker's first choice in general
    rules = pb.Rules(categories=[cat], pins=[pb.Pin(item_id=attrs.item_ids[pin], position=2)])
    resp = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, rules=rules, explain=True), timeout=30,
                          metadata=KEY)
    got = idx(attrs, resp.items)
    assert len(got) == k and len(set(got)) == k and not resp.cold_start
    assert all(j in allowed for j in got)  # in the category, nothing the user has seen
    assert got[2] == pin
    assert all(it.propensity == 1.0 and it.reason for it in resp.items)
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)
    store = open_feedback_store(str(server_proc.feedback_db))
    try:
        logged = [imp for imp in store.read_impressions_since(0) if imp.impression_id == resp.impression_id]
    finally:
        store.close()
    assert len(logged) == 1 and logged[0].policy == "rules"
    assert logged[0].items == [it.item_id for it in resp.items] and logged[0].propensities == [1.0] * k


def test_category_cap_and_mmr_fill_k_whenever_k_qualify(stub, served):
    bundle, attrs, user, seen, _ = served
    unseen = [j for j in range(len(attrs.item_ids)) if j not in seen]
    k = 8
    cap = pb.Rules(diversity=pb.DIVERSITY_CATEGORY_CAP, category_cap=2)
    resp = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, rules=cap), timeout=30, metadata=KEY)
    got = idx(attrs, resp.items)
    counts = Counter(c for j in got for c in attrs.categories[j])
    assert max(counts.values(), default=0) <= 2 and all(j in unseen for j in got)
    if len(got) < k:  # the cap, not the candidate count, stopped it: every other unseen item hits the cap
        assert all(any(counts[c] >= 2 for c in attrs.categories[j]) for j in unseen if j not in got)
    mmr = pb.Rules(diversity=pb.DIVERSITY_MMR, mmr_lambda=0.3)
    resp = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, rules=mmr), timeout=30, metadata=KEY)
    got = idx(attrs, resp.items)
    assert len(got) == k == len(set(got)) and all(j in unseen for j in got)


def test_a_cold_start_with_rules_is_popularity_within_the_filters(stub, served):
    bundle, attrs, _, _, _ = served
    brand = Counter(b for b in attrs.brand if b).most_common(1)[0][0]
    pop = np.asarray(bundle.popularity, dtype=np.float64)
    of_brand = [j for j in np.argsort(-pop, kind="stable").tolist() if attrs.brand[j] == brand]
    k = min(5, len(of_brand) - 1)
    resp = stub.Recommend(pb.RecommendRequest(user_id="rules-test-new-user", k=k, rules=pb.Rules(brands=[brand])),
                          timeout=30, metadata=KEY)
    assert resp.cold_start and idx(attrs, resp.items) == of_brand[:k]
    exclude = attrs.item_ids[of_brand[0]]
    resp = stub.Recommend(pb.RecommendRequest(user_id="rules-test-new-user", k=k, exclude_item_ids=[exclude],
                                              rules=pb.Rules(brands=[brand])), timeout=30, metadata=KEY)
    assert idx(attrs, resp.items) == of_brand[1:k + 1]


def test_search_within_the_rules_hybrid_when_the_bundle_has_a_lexical_index(stub, served):
    bundle, attrs, user, _, hybrid = served
    brand = Counter(b for b in attrs.brand if b).most_common(1)[0][0]
    of_brand = [j for j in range(len(attrs.item_ids)) if attrs.brand[j] == brand]
    query = bundle.titles[of_brand[0]] or brand
    plain = stub.Search(pb.SearchRequest(user_id=user, query=query, k=10), timeout=30, metadata=KEY)
    assert plain.retrieval == ("hybrid" if hybrid else "dense")
    assert bool(plain.facets) == hybrid and (max(r.lexical_score for r in plain.results) > 0) == hybrid
    assert [r.score for r in plain.results] == sorted((r.score for r in plain.results), reverse=True)
    k = min(4, len(of_brand))
    pin = of_brand[-1]
    rules = pb.Rules(brands=[brand], pins=[pb.Pin(item_id=attrs.item_ids[pin], position=0)])
    resp = stub.Search(pb.SearchRequest(user_id=user, query=query, k=k, rules=rules), timeout=30, metadata=KEY)
    got = idx(attrs, resp.results)
    assert len(got) == k and got[0] == pin and all(attrs.brand[j] == brand for j in got)
    if hybrid:  # facets count the matched items, all of the brand
        assert [f.value for f in resp.facets if f.field == "brand"] == [brand]
    cold = stub.Search(pb.SearchRequest(user_id="rules-test-new-user", query=query, k=k, rules=rules), timeout=30,
                       metadata=KEY)
    assert cold.cold_start and all(r.relevance == 0 for r in cold.results)
    assert all(attrs.brand[j] == brand for j in idx(attrs, cold.results))


def test_similar_items_within_the_rules(stub, served):
    bundle, attrs, _, _, _ = served
    cat = common_category(attrs)
    in_cat = [j for j in range(len(attrs.item_ids)) if cat in attrs.categories[j]]
    item, pin = in_cat[0], in_cat[-1]
    k = min(5, len(in_cat) - 1)
    rules = pb.Rules(categories=[cat], pins=[pb.Pin(item_id=attrs.item_ids[pin], position=1)])
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id=attrs.item_ids[item], k=k, rules=rules), timeout=30,
                             metadata=KEY)
    got = idx(attrs, resp.items)
    assert len(got) == k and item not in got and got[1] == pin and all(j in in_cat for j in got)
    free = [s.similarity for s, j in zip(resp.items, got) if j != pin]
    assert free == sorted(free, reverse=True)  # the unpinned items by similarity


@pytest.mark.parametrize("rpc, field", [("Recommend", "rules.price_min"), ("Recommend", "rules.pins[1].position"),
                                        ("Search", "rules.boosts: key 'shade:red'"), ("SimilarItems", "rules.category_cap"),
                                        ("Recommend", "rules.mmr_lambda")])
def test_bad_rules_are_rejected_naming_the_field(stub, served, rpc, field):
    _, attrs, user, _, _ = served
    item = attrs.item_ids[0]
    rules = {"rules.price_min": pb.Rules(price_min=-1.0),
             "rules.pins[1].position": pb.Rules(pins=[pb.Pin(item_id=item, position=0),
                                                      pb.Pin(item_id=item, position=0)]),
             "rules.boosts: key 'shade:red'": pb.Rules(boosts={"shade:red": 1.0}),
             "rules.category_cap": pb.Rules(diversity=pb.DIVERSITY_CATEGORY_CAP),
             "rules.mmr_lambda": pb.Rules(diversity=pb.DIVERSITY_MMR, mmr_lambda=float("nan"))}[field]
    request = {"Recommend": pb.RecommendRequest(user_id=user, k=3, rules=rules),
               "Search": pb.SearchRequest(user_id=user, query="news", k=3, rules=rules),
               "SimilarItems": pb.SimilarItemsRequest(item_id=item, k=3, rules=rules)}[rpc]
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request, timeout=30, metadata=KEY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()


def test_a_price_filter_the_catalogue_cannot_answer_is_rejected(stub, served):
    _, attrs, user, _, _ = served
    if np.isfinite(attrs.price).any():
        pytest.skip("the served catalogue has prices")
    with pytest.raises(grpc.RpcError) as info:
        stub.Recommend(pb.RecommendRequest(user_id=user, k=3, rules=pb.Rules(price_max=10.0)), timeout=30,
                       metadata=KEY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("rules.price_max")


@st.composite
def ruled_requests(draw, attrs: ItemAttributes):
    cats = sorted({c for cs in attrs.categories for c in cs})
    brands = sorted({b for b in attrs.brand if b})
    k = draw(st.integers(1, 12))
    rules = pb.Rules(categories=draw(st.lists(st.sampled_from(cats), max_size=2, unique=True)),
                     brands=draw(st.lists(st.sampled_from(brands), max_size=3, unique=True)))
    for key in draw(st.lists(st.sampled_from([f"brand:{b}" for b in brands[:5]] + [f"category:{c}" for c in cats[:5]]),
                             max_size=2, unique=True)):
        rules.boosts[key] = draw(st.floats(-3, 3))
    for pos in draw(st.lists(st.integers(0, k - 1), max_size=2, unique=True)):
        rules.pins.add(item_id=str(attrs.item_ids[draw(st.integers(0, len(attrs.item_ids) - 1))]), position=pos)
    rules.diversity = draw(st.sampled_from([pb.DIVERSITY_NONE, pb.DIVERSITY_MMR, pb.DIVERSITY_CATEGORY_CAP]))
    if rules.diversity == pb.DIVERSITY_CATEGORY_CAP:
        rules.category_cap = draw(st.integers(1, 3))
    exclude = draw(st.lists(st.integers(0, len(attrs.item_ids) - 1), max_size=3, unique=True))
    return draw(st.booleans()), k, rules, exclude


def test_generated_rules_hold_on_the_live_recommend(stub, served):
    bundle, attrs, user, seen, _ = served

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(ruled_requests(attrs))
    def check(case):
        known, k, rules, exclude = case
        req = pb.RecommendRequest(user_id=user if known else "rules-test-new-user", k=k, rules=rules,
                                  exclude_item_ids=[str(attrs.item_ids[j]) for j in exclude])
        resp = stub.Recommend(req, timeout=30, metadata=KEY)
        got = idx(attrs, resp.items)
        hidden = (seen if known else set()) | set(exclude)
        ok = [j for j in range(len(attrs.item_ids)) if j not in hidden and attrs.available[j]
              and (not rules.categories or attrs.categories[j] & set(rules.categories))
              and (not rules.brands or attrs.brand[j] in set(rules.brands))]
        assert len(got) == len(set(got)) <= k and all(j in ok for j in got)
        assert resp.cold_start == (not known) and all(it.propensity == 1.0 for it in resp.items)
        pins: dict[int, int] = {}
        for p in sorted(rules.pins, key=lambda p: p.position):
            j = attrs.index(p.item_id)
            if j in ok and j not in pins.values():
                pins[p.position] = j
        for rank, (pos, j) in enumerate(sorted(pins.items())):
            assert j in got  # positions are < k: a qualifying pin is always shown
            if len(got) < k:  # every item picked besides the pins is shown; past their end a pin goes last
                assert got[min(pos, len(got) - len(pins) + rank)] == j
            elif pos <= k - len(pins) + rank:  # a full list: at least k - pins were picked besides them
                assert got[pos] == j
        if rules.diversity == pb.DIVERSITY_CATEGORY_CAP:
            counts = Counter(c for j in got if j not in pins.values() for c in attrs.categories[j])
            assert max(counts.values(), default=0) <= rules.category_cap
        else:
            assert len(got) == min(k, len(ok))

    check()


def test_repurchase_brings_a_seen_item_back_only_once_its_gap_has_passed(stub, served):
    """A seen item pinned first: excluded without a repurchase rule, back with a gap of 0 s for one of its
    categories, still excluded with a gap longer than the time since the user's interaction with it (the bundle's
    history times are the data set's, years ago)."""
    bundle, attrs, user, _, _ = served
    items, _, times = bundle.history_inputs(bundle.pseudonymise(user))
    assert times is not None, "the served bundle's catalogue holds no history times"
    timed = [int(j) for j, t in zip(items, times) if np.isfinite(t) and attrs.categories[int(j)]]
    assert timed, "the test needs a seen item with a known time and a category"
    j = timed[-1]
    cat = sorted(attrs.categories[j])[0]

    def first(gaps: dict) -> list[int]:
        rules = pb.Rules(pins=[pb.Pin(item_id=attrs.item_ids[j], position=0)], repurchase_gap_s=gaps)
        resp = stub.Recommend(pb.RecommendRequest(user_id=user, k=5, rules=rules), timeout=30, metadata=KEY)
        return idx(attrs, resp.items)

    assert j not in first({})
    assert first({cat: 0.0})[0] == j
    assert j not in first({cat: 3.0e9})  # 95 years
