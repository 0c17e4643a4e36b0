"""Request-time rules (prefmine.rules) under a 1,000-case property test: every returned item satisfies the
filters, nothing seen comes back unless its category's repurchase gap has passed, k items come back whenever k
qualify, pins sit at their positions, category caps hold, MMR at lambda 1 is the plain order, and without rules
the answer is the top k by score. Plus hand-checked cases and the config checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_catalogue import BRANDS, CATS, KINDS, random_attributes

from prefmine.rules import ItemAttributes, Rules, eligible, intra_list_diversity, select


@st.composite
def cases(draw):
    n = draw(st.integers(3, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # the catalogue from a seed: fast to draw
    attrs = random_attributes(rng, n, available_rate=0.75)
    lo = draw(st.one_of(st.none(), st.floats(1, 60)))
    hi = draw(st.one_of(st.none(), st.floats(lo or 1, 100)))
    diversity = draw(st.sampled_from(["none", "mmr", "category_cap"]))
    rules = Rules(
        categories=frozenset(draw(st.sets(st.sampled_from(CATS), max_size=2))),
        brands=frozenset(draw(st.sets(st.sampled_from(BRANDS), max_size=2))),
        kinds=frozenset(draw(st.sets(st.sampled_from(KINDS), max_size=2))),
        price_min=lo, price_max=hi, include_unavailable=draw(st.booleans()),
        boosts={f"brand:{b}": draw(st.floats(-2, 2)) for b in draw(st.sets(st.sampled_from(BRANDS), max_size=2))},
        pins={draw(st.integers(0, 6)): f"i{draw(st.integers(0, n - 1))}" for _ in range(draw(st.integers(0, 2)))},
        diversity=diversity, mmr_lambda=draw(st.floats(0, 1)), category_cap=draw(st.integers(1, 3)),
        repurchase_gap_s={c: draw(st.floats(0, 100)) for c in draw(st.sets(st.sampled_from(CATS), max_size=2))},
        kind_quota={kind: draw(st.integers(1, 4)) for kind in draw(st.sets(st.sampled_from(KINDS[1:]), max_size=2))},
        freshness_half_life_s=draw(st.sampled_from([0.0, 10.0, 1000.0])))
    history = rng.integers(0, n, size=draw(st.integers(0, 8))).tolist()
    ts = rng.integers(0, 201, size=len(history)).astype(float).tolist()
    scores = rng.normal(size=n).round(draw(st.sampled_from([0, 1, 6])))  # rounding makes ties
    vecs = rng.normal(size=(n, 4))
    return attrs, rules, history, ts, scores, vecs, draw(st.integers(1, 12))


@settings(max_examples=1000, deadline=None)
@given(cases())
def test_rules_hold_on_every_request(case):
    attrs, rules, history, ts, scores, vecs, k = case
    now = 200.0
    ok = eligible(attrs, rules, history, ts, now)
    items, out_scores = select(scores, attrs, rules, k, item_vectors=vecs, history=history, history_ts=ts, now=now)
    assert len(items) == len(set(items.tolist())) == len(out_scores)
    # what can fill the list: every qualifying item, but of a kind with a quota only its quota
    pinned_ids = {attrs.index(i) for i in rules.pins.values()} & set(np.flatnonzero(ok).tolist())
    unpinned = np.array([j for j in np.flatnonzero(ok) if j not in pinned_ids], dtype=np.int64)
    reserved = {kind: min(q, int((attrs.kind[unpinned] == kind).sum())) for kind, q in rules.kind_quota.items()}
    fill = len(pinned_ids) + sum(reserved.values()) + int((~np.isin(attrs.kind[unpinned], list(reserved))).sum())
    if rules.diversity != "category_cap":
        assert len(items) == min(k, fill)  # filtered before the cut: k come back when k qualify
    for j in items:
        assert ok[j]
        assert rules.include_unavailable or attrs.available[j]
        assert not rules.kinds or attrs.kind[j] in rules.kinds
        assert not rules.brands or attrs.brand[j] in rules.brands
        assert not rules.categories or attrs.categories[j] & rules.categories
        assert rules.price_min is None or attrs.price[j] >= rules.price_min
        assert rules.price_max is None or attrs.price[j] <= rules.price_max
        if j in history:  # a seen item only comes back through a repurchase category whose gap has passed
            last = max(t for h, t in zip(history, ts) if h == j)
            gaps = [rules.repurchase_gap_s[c] for c in attrs.categories[j] if c in rules.repurchase_gap_s]
            assert gaps and now - last >= min(gaps)
    placed = {}
    for pos, item in sorted(rules.pins.items()):
        j = attrs.index(item)
        if ok[j] and j not in placed.values():
            placed[pos] = j
    for rank, (pos, j) in enumerate(sorted(placed.items())):
        if rules.diversity != "category_cap":
            free = min(k, fill - len(placed))  # items picked besides the pins
        elif len(items) < k:  # the cap picked fewer than qualify, and every one of them is in the list
            free = len(items) - len(placed)
        else:  # a full list: at least k - pins were picked besides the pins, maybe more (cut at k)
            if pos <= k - len(placed) + rank:
                assert items[pos] == j
            continue
        expect = min(pos, free + rank)  # past the end of the list a pin goes last
        if expect < len(items):
            assert items[expect] == j
    free = [j for j in items if j not in placed.values()]
    for kind, n in reserved.items():  # a kind with a quota: never more than its quota, and all of it when it fits
        got = sum(attrs.kind[j] == kind for j in free)
        assert got <= rules.kind_quota[kind]
        if not placed and sum(reserved.values()) <= k:
            assert got == n
    if rules.diversity == "category_cap" and not rules.kind_quota:  # a hard cap, as full as the cap allows
        counts = {c: sum(c in attrs.categories[j] for j in free) for c in CATS}
        assert max(counts.values()) <= rules.category_cap
        if len(items) < k:
            for j in np.flatnonzero(ok):
                if j not in items:
                    assert any(counts[c] >= rules.category_cap for c in attrs.categories[j])


@settings(max_examples=200, deadline=None)
@given(cases())
def test_without_rules_the_answer_is_the_top_k(case):
    attrs, _, _, _, scores, vecs, k = case
    plain = Rules(include_unavailable=True)
    items, _ = select(scores, attrs, plain, k)
    assert items.tolist() == np.argsort(-scores, kind="stable")[:k].tolist()
    mmr1, _ = select(scores, attrs, Rules(include_unavailable=True, diversity="mmr", mmr_lambda=1.0), k,
                     item_vectors=vecs)
    assert sorted(scores[mmr1].tolist(), reverse=True) == sorted(scores[items].tolist(), reverse=True)


def test_hand_checked_slate():
    items = pd.DataFrame({"item": ["a", "b", "c", "d", "e"], "categories": ["skin|hair", "skin", "hair", "nails", ""],
                          "brand": ["acme", "bolt", "acme", None, "bolt"], "price": [5.0, None, 20.0, 8.0, 3.0],
                          "available": [True, True, True, True, False]})
    attrs = ItemAttributes.from_items(items)
    scores = np.array([5.0, 4.0, 3.0, 2.0, 9.0])
    assert select(scores, attrs, Rules(), 3)[0].tolist() == [0, 1, 2]  # e out of stock
    assert select(scores, attrs, Rules(price_max=10), 5)[0].tolist() == [0, 3]  # b has no price
    assert select(scores, attrs, Rules(boosts={"brand:acme": 3}), 2)[0].tolist() == [0, 2]
    assert select(scores, attrs, Rules(pins={0: "d"}), 3)[0].tolist() == [3, 0, 1]
    assert select(scores, attrs, Rules(pins={1: "e"}), 2)[0].tolist() == [0, 1]  # a retired item is never pinned
    assert select(scores, attrs, Rules(diversity="category_cap", category_cap=1), 3)[0].tolist() == [0, 3]
    assert select(scores, attrs, Rules(), 3, history=[0, 1])[0].tolist() == [2, 3]
    again = Rules(repurchase_gap_s={"hair": 30 * 86400})
    assert select(scores, attrs, again, 2, history=[0], history_ts=[0.0], now=31 * 86400)[0].tolist() == [0, 1]
    assert select(scores, attrs, again, 2, history=[0], history_ts=[0.0], now=29 * 86400)[0].tolist() == [1, 2]
    # an interaction of unknown time (NaN) keeps the item seen: no gap can be shown to have passed
    assert select(scores, attrs, again, 2, history=[0], history_ts=[np.nan], now=31 * 86400)[0].tolist() == [1, 2]
    vecs = np.array([[1, 0], [1, 0.01], [0, 1], [0.7, 0.7], [1, 1]], dtype=float)
    mmr = select(scores, attrs, Rules(diversity="mmr", mmr_lambda=0.5), 2, item_vectors=vecs)[0].tolist()
    assert mmr == [0, 2]  # b is a, nearly; c is orthogonal
    assert intra_list_diversity(np.array([0, 2]), vecs) == pytest.approx(1.0)
    assert intra_list_diversity(np.array([0, 1]), vecs) < 0.001


def test_content_freshness_and_kind_quotas():
    day = 86400.0
    items = pd.DataFrame({"item": ["p1", "p2", "a-new", "a-old", "v1"], "kind": ["product", "product", "article",
                                                                             "article", "video"],
                          "published": [None, "", 10 * day, 3 * day, 9 * day]})
    attrs = ItemAttributes.from_items(items)
    assert np.isnan(attrs.published[:2]).all() and attrs.published[2] == 10 * day
    scores = np.array([3.0, 2.0, 2.5, 2.5, 1.0])
    week = Rules(freshness_half_life_s=7 * day)
    got, s = select(scores, attrs, week, 5, now=10 * day)
    assert got.tolist() == [0, 2, 1, 3, 4]  # the week-old article falls below the new one, and below p2
    # one half-life halves the appeal: sigmoid(s') == sigmoid(s) / 2 for the article published 7 days before now
    z = (scores - scores.mean()) / scores.std()
    s_old = s[got.tolist().index(3)]
    assert 1 / (1 + np.exp(-s_old)) == pytest.approx(0.5 / (1 + np.exp(-z[3])), rel=1e-9)
    assert s[0] == pytest.approx(z[0])  # products keep their score
    # quotas: one article, one video reserved; the rest products; merged by score
    mixed, _ = select(scores, attrs, Rules(kind_quota={"article": 1, "video": 1}), 4)
    assert mixed.tolist() == [0, 2, 1, 4]
    assert select(scores, attrs, Rules(kind_quota={"article": 2}), 2)[0].tolist() == [2, 3]  # reserved fill k
    assert select(scores, attrs, Rules(kind_quota={"podcast": 3}), 3)[0].tolist() == [0, 2, 3]  # no podcast: as without


@pytest.mark.parametrize("kw, field", [
    ({"diversity": "shuffle"}, "diversity"), ({"mmr_lambda": 1.5}, "mmr_lambda"),
    ({"diversity": "category_cap"}, "category_cap"), ({"price_min": 5, "price_max": 1}, "price_min"),
    ({"boosts": {"colour:red": 1}}, "boosts"), ({"pins": {-1: "a"}}, "pins"),
    ({"repurchase_gap_s": {"hair": -1}}, "repurchase_gap_s"), ({"price_max": float("nan")}, "price"),
    ({"kind_quota": {"article": 0}}, "kind_quota"), ({"freshness_half_life_s": -1.0}, "freshness_half_life_s"),
])
def test_bad_rules_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        Rules(**kw)
