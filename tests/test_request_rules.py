"""Request-time rules on the serving path, without Ray: a ``prefmine.v1.Rules`` message is validated
(serve/validate.py, errors naming the field), converted (prefmine.serving.request_rules.rules_of) and applied by
``ruled_top``, the selection the ingress runs over the ranker's candidates, growing the candidate count while a
category cap leaves fewer than k. A 1,000-case property test checks the invariants over generated messages;
the gRPC side is tests/test_serve_rules.py. Also the search engine's eligibility mask and the bundle's lexical
index (saved and loaded as the ranker job and the encoder deployment do)."""

from __future__ import annotations

import asyncio
import gzip
import html
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_catalogue import BRANDS, CATS, KINDS, random_attributes

from prefmine.rules import ItemAttributes, Rules
from prefmine.serving.request_rules import (
    CandidateVectors,
    allowed_mask,
    own_scores,
    ruled_top,
    rules_of,
    unanswerable,
)
from prefmine.v1 import recommender_pb2 as pb
from serve.validate import BadRequest, check_rules


def test_rules_of_maps_every_field_and_fills_the_defaults():
    msg = pb.Rules(categories=["skin"], brands=["acme", "bolt"], kinds=["video"], price_min=0.0, price_max=9.5,
                   include_unavailable=True, boosts={"brand:acme": 1.5, "item:i3": -2.0},
                   pins=[pb.Pin(item_id="i1", position=2)], diversity=pb.DIVERSITY_MMR, mmr_lambda=0.25)
    r = rules_of(msg)
    assert (r.categories, r.brands, r.kinds) == ({"skin"}, {"acme", "bolt"}, {"video"})
    assert (r.price_min, r.price_max, r.include_unavailable) == (0.0, 9.5, True)  # 0.0 is set, not "unset"
    assert r.boosts == {"brand:acme": 1.5, "item:i3": -2.0} and r.pins == {2: "i1"}
    assert (r.diversity, r.mmr_lambda, r.exclude_seen) == ("mmr", 0.25, True)
    empty = rules_of(pb.Rules(), exclude_seen=False)
    assert (empty.price_min, empty.price_max, empty.diversity, empty.mmr_lambda) == (None, None, "none", 0.7)
    assert not empty.include_unavailable and not empty.exclude_seen
    cap = rules_of(pb.Rules(diversity=pb.DIVERSITY_CATEGORY_CAP, category_cap=2))
    assert (cap.diversity, cap.category_cap) == ("category_cap", 2)
    again = rules_of(pb.Rules(repurchase_gap_s={"hair": 86400.0, "skin": 0.0}))
    assert again.repurchase_gap_s == {"hair": 86400.0, "skin": 0.0} and empty.repurchase_gap_s == {}
    content = rules_of(pb.Rules(kind_quota={"article": 2}, freshness_half_life_s=3600.0))
    assert content.kind_quota == {"article": 2} and content.freshness_half_life_s == 3600.0
    assert empty.kind_quota == {} and empty.freshness_half_life_s == 0.0


@pytest.mark.parametrize("rules, k, field", [
    (pb.Rules(price_min=-1.0), 5, "rules.price_min"),
    (pb.Rules(price_max=float("nan")), 5, "rules.price_max"),
    (pb.Rules(price_min=5.0, price_max=1.0), 5, "rules.price_min"),
    (pb.Rules(categories=[""]), 5, "rules.categories[0]"),
    (pb.Rules(brands=["ok", "x" * 300]), 5, "rules.brands[1]"),
    (pb.Rules(kinds=["k"] * 101), 5, "rules.kinds"),
    (pb.Rules(boosts={"colour:red": 1.0}), 5, "rules.boosts: key 'colour:red'"),
    (pb.Rules(boosts={"brand:": 1.0}), 5, "rules.boosts: key 'brand:'"),
    (pb.Rules(boosts={"brand:acme": float("inf")}), 5, "rules.boosts: key 'brand:acme'"),
    (pb.Rules(boosts={"brand:acme": 101.0}), 5, "rules.boosts: key 'brand:acme'"),
    (pb.Rules(pins=[pb.Pin(item_id="a", position=5)]), 5, "rules.pins[0].position"),
    (pb.Rules(pins=[pb.Pin(item_id="a", position=-1)]), 5, "rules.pins[0].position"),
    (pb.Rules(pins=[pb.Pin(item_id="a", position=1), pb.Pin(item_id="b", position=1)]), 5, "rules.pins[1].position"),
    (pb.Rules(pins=[pb.Pin(item_id="", position=0)]), 5, "rules.pins[0].item_id"),
    (pb.Rules(diversity=7), 5, "rules.diversity"),
    (pb.Rules(diversity=pb.DIVERSITY_MMR, mmr_lambda=1.5), 5, "rules.mmr_lambda"),
    (pb.Rules(mmr_lambda=0.5), 5, "rules.mmr_lambda"),
    (pb.Rules(diversity=pb.DIVERSITY_CATEGORY_CAP), 5, "rules.category_cap"),
    (pb.Rules(category_cap=2), 5, "rules.category_cap"),
    (pb.Rules(repurchase_gap_s={"hair": -1.0}), 5, "rules.repurchase_gap_s: key 'hair'"),
    (pb.Rules(repurchase_gap_s={"hair": float("nan")}), 5, "rules.repurchase_gap_s: key 'hair'"),
    (pb.Rules(repurchase_gap_s={"hair": 4e9}), 5, "rules.repurchase_gap_s: key 'hair'"),
    (pb.Rules(repurchase_gap_s={" ": 1.0}), 5, "rules.repurchase_gap_s: key ' '"),
    (pb.Rules(repurchase_gap_s={f"c{i}": 1.0 for i in range(101)}), 5, "rules.repurchase_gap_s"),
    (pb.Rules(kind_quota={"article": 0}), 5, "rules.kind_quota: key 'article'"),
    (pb.Rules(kind_quota={"article": 1001}), 5, "rules.kind_quota: key 'article'"),
    (pb.Rules(kind_quota={" ": 1}), 5, "rules.kind_quota: key ' '"),
    (pb.Rules(kind_quota={f"k{i}": 1 for i in range(101)}), 5, "rules.kind_quota"),
    (pb.Rules(freshness_half_life_s=-1.0), 5, "rules.freshness_half_life_s"),
    (pb.Rules(freshness_half_life_s=float("inf")), 5, "rules.freshness_half_life_s"),
])
def test_bad_rules_are_rejected_naming_the_field(rules, k, field):
    with pytest.raises(BadRequest) as info:
        check_rules(rules, k)
    assert str(info.value).startswith(field), str(info.value)


def test_a_kind_quota_makes_the_candidate_loop_reach_down_to_that_kind():
    """Articles the ranker puts last still get their reserved slots: the loop asks for more candidates until
    the quota is met (or every qualifying item was asked for)."""
    n = 200
    kinds = np.array(["product"] * (n - 5) + ["article"] * 5, dtype=object)
    attrs = ItemAttributes(item_ids=np.array([f"i{j}" for j in range(n)]), categories=[frozenset()] * n,
                           brand=np.array([""] * n, dtype=object), price=np.full(n, np.nan),
                           available=np.ones(n, dtype=bool), kind=kinds)
    scores = -np.arange(n, dtype=np.float64)  # item order is score order: the articles are the worst five
    asked: list[int] = []

    async def fetch(m):
        asked.append(m)
        return np.arange(m), scores[:m]

    rules = rules_of(pb.Rules(kind_quota={"article": 2}))
    items, _ = asyncio.run(ruled_top(attrs, rules, 10, n, 10, fetch))
    assert items.tolist() == list(range(8)) + [195, 196] and asked[-1] == n
    plain, _ = asyncio.run(ruled_top(attrs, rules_of(pb.Rules()), 10, n, 10, fetch))
    assert plain.tolist() == list(range(10))


def test_a_pin_the_callers_mask_refuses_is_not_shown():
    """Search and SimilarItems pass their mask, with the live catalogue's retired items off, to the selection:
    a client's pin of a retired item must not bring it back, though the bundle's attributes still allow it."""
    n = 30
    attrs = ItemAttributes(item_ids=np.array([f"i{j}" for j in range(n)]), categories=[frozenset()] * n,
                           brand=np.array([""] * n, dtype=object), price=np.full(n, np.nan),
                           available=np.ones(n, dtype=bool), kind=np.array(["product"] * n, dtype=object))
    allowed = np.ones(n, dtype=bool)
    allowed[7] = False  # retired since the bundle

    async def fetch(m):
        keep = np.flatnonzero(allowed)[:m]
        return keep, -keep.astype(np.float64)

    rules = rules_of(pb.Rules(pins=[pb.Pin(item_id="i7", position=0), pb.Pin(item_id="i9", position=1)]))
    items, _ = asyncio.run(ruled_top(attrs, rules, 5, int(allowed.sum()), 5, fetch, allowed=allowed))
    assert items.tolist() == [0, 9, 1, 2, 3]
    unmasked, _ = asyncio.run(ruled_top(attrs, rules, 5, int(allowed.sum()), 5, fetch))
    assert unmasked.tolist()[:2] == [7, 9]  # without the mask the pin is honoured: the mask is what refuses it


def test_repurchase_is_refused_where_there_is_no_user_history():
    from serve.validate import validate_search, validate_similar

    again = pb.Rules(repurchase_gap_s={"hair": 1.0})
    for check, request in ((validate_search, pb.SearchRequest(user_id="u", query="q", k=5, rules=again)),
                           (validate_similar, pb.SimilarItemsRequest(item_id="i", k=5, rules=again))):
        with pytest.raises(BadRequest, match="rules.repurchase_gap_s is for Recommend only"):
            check(request)
    check_rules(again, 5)  # Recommend's


def test_a_price_filter_over_a_catalogue_without_prices_is_refused_not_answered_empty():
    attrs = ItemAttributes.from_items(pd.DataFrame({"item": ["a", "b"], "brand": ["x", "y"]}))
    assert unanswerable(attrs, pb.Rules(price_max=3.0)).startswith("rules.price_max")
    assert unanswerable(attrs, pb.Rules(brands=["x"])) is None


def test_candidate_vectors_index_like_the_catalogue_array_and_refuse_missing_rows():
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    cv = CandidateVectors(np.array([7, 2, 5]), full[[7, 2, 5]])
    assert np.array_equal(cv[np.array([5, 7, 2, 5])], full[[5, 7, 2, 5]])
    with pytest.raises(KeyError):
        cv[np.array([3])]
    assert own_scores(np.array([5, 9]), np.array([2, 5]), np.array([0.1, 0.4])).tolist() == [0.4, 0.0]


# -- the property test ------------------------------------------------------------------------------------------

@st.composite
def requests(draw):
    """A catalogue (from a seed), a valid Rules message, k, a history and excluded items."""
    n = draw(st.integers(5, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    attrs = random_attributes(rng, n, available_rate=0.8)
    k = draw(st.integers(1, 15))
    msg = pb.Rules(categories=draw(st.lists(st.sampled_from(CATS), max_size=2, unique=True)),
                   brands=draw(st.lists(st.sampled_from(BRANDS), max_size=2, unique=True)),
                   kinds=draw(st.lists(st.sampled_from(KINDS), max_size=2, unique=True)),
                   include_unavailable=draw(st.booleans()))
    lo = draw(st.one_of(st.none(), st.floats(0, 60)))
    hi = draw(st.one_of(st.none(), st.floats(lo or 0, 100)))
    if lo is not None:
        msg.price_min = lo
    if hi is not None:
        msg.price_max = hi
    keys = draw(st.lists(st.sampled_from([f"brand:{b}" for b in BRANDS] + [f"category:{c}" for c in CATS]
                                         + [f"item:i{j}" for j in range(5)]), max_size=3, unique=True))
    for key in keys:
        msg.boosts[key] = draw(st.floats(-3, 3))
    for pos in draw(st.lists(st.integers(0, k - 1), max_size=2, unique=True)):
        msg.pins.add(item_id=f"i{draw(st.integers(0, n - 1))}", position=pos)
    msg.diversity = draw(st.sampled_from([pb.DIVERSITY_NONE, pb.DIVERSITY_MMR, pb.DIVERSITY_CATEGORY_CAP]))
    if msg.diversity == pb.DIVERSITY_MMR and draw(st.booleans()):
        msg.mmr_lambda = draw(st.floats(0, 1))
    if msg.diversity == pb.DIVERSITY_CATEGORY_CAP:
        msg.category_cap = draw(st.integers(1, 3))
    history = sorted(set(rng.integers(0, n, size=draw(st.integers(0, 10))).tolist()))
    exclude = sorted(set(rng.integers(0, n, size=draw(st.integers(0, 5))).tolist()))
    scores = rng.normal(size=n)  # continuous: no ties
    return attrs, msg, k, history, exclude, scores, rng.normal(size=(n, 4))


def passes(attrs: ItemAttributes, r: Rules, i: int) -> bool:
    """The filters, spelled out item by item (the reference the served selection is checked against)."""
    return ((r.include_unavailable or bool(attrs.available[i]))
            and (not r.categories or bool(attrs.categories[i] & r.categories))
            and (not r.brands or attrs.brand[i] in r.brands) and (not r.kinds or attrs.kind[i] in r.kinds)
            and (r.price_min is None or attrs.price[i] >= r.price_min)
            and (r.price_max is None or attrs.price[i] <= r.price_max))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_ruled_selection_invariants(case):
    attrs, msg, k, history, exclude, scores, vecs = case
    check_rules(msg, k)  # the generated message is valid
    rules = rules_of(msg)
    mask = allowed_mask(attrs, rules, history, exclude)
    ok = [i for i in range(len(scores)) if passes(attrs, rules, i) and i not in history and i not in exclude]
    assert np.flatnonzero(mask).tolist() == ok
    ranked = np.array(sorted(ok, key=lambda i: -scores[i]), dtype=np.int64)  # the ranker's candidates, best first
    asked: list[int] = []

    async def fetch(n):
        asked.append(n)
        return ranked[:n], scores[ranked[:n]]

    async def vectors_of(items):
        return vecs[items]

    first = min(10, len(ok))  # a small first ask, so that category caps make the loop grow it
    items, got_scores = asyncio.run(ruled_top(attrs, rules, k, len(ok), first, fetch, vectors_of, history, exclude))
    items = items.tolist()
    assert len(items) == len(set(items)) == len(got_scores) <= k
    assert all(i in ok for i in items)  # filters, history, exclusions: every returned item qualifies
    pins: dict[str, int] = {}
    for pos, item in sorted(rules.pins.items()):
        j = attrs.index(item)
        if mask[j]:
            pins.setdefault(item, pos)  # the same item pinned twice keeps its first position
    for rank, (item, pos) in enumerate(sorted(pins.items(), key=lambda p: p[1])):
        j = attrs.index(item)
        assert j in items  # a qualifying pinned item is always shown (positions are < k)
        if len(items) < k:  # every item picked besides the pins is shown; past their end a pin goes last
            assert items[min(pos, len(items) - len(pins) + rank)] == j
        elif pos <= k - len(pins) + rank:  # a full list: at least k - pins were picked besides them
            assert items[pos] == j
    free = [i for i in items if attrs.item_ids[i] not in pins]
    if rules.diversity == "category_cap":
        counts: dict[str, int] = {}
        for i in free:
            for c in attrs.categories[i]:
                counts[c] = counts.get(c, 0) + 1
        assert all(v <= rules.category_cap for v in counts.values())
        if len(items) < k:  # fewer than k only when no other qualifying item fits under the cap
            assert all(any(counts.get(c, 0) >= rules.category_cap for c in attrs.categories[i])
                       for i in ok if i not in items)
    else:
        assert len(items) == min(k, len(ok))  # k come back whenever k qualify
    assert asked == sorted(set(asked)) and all(0 < a <= len(ok) for a in asked)  # grown, never past what exists
    if rules.diversity == "none" and not rules.boosts and len(free):
        best = set(ranked[:len(free) + len(pins)].tolist()) - {attrs.index(p) for p in pins}
        assert set(free) <= best  # the free slots hold the best-scored qualifying items


# -- the lexical index of a bundle and the engine's rules mask ----------------------------------------------------

def magazine_items(limit: int = 400) -> pd.DataFrame:
    """Items of the real Magazine_Subscriptions metadata (PREFMINE_DATA_DIR), as a bundle's catalogue holds them."""
    data = Path(os.environ.get("PREFMINE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = data / "amazon2018" / "Magazine_Subscriptions" / "meta_Magazine_Subscriptions.json.gz"
    if not path.is_file():
        pytest.fail(f"real data not found at {path}: set PREFMINE_DATA_DIR")
    rows = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            m = json.loads(line)
            cats = [html.unescape(c) for c in m.get("category") or [] if c]
            brand = html.unescape(m.get("brand") or "").strip()
            if cats and brand:  # titles as data preparation makes them (the raw ones are markup): brand, category
                rows.append({"item": m["asin"], "title": f"{brand} {cats[-1]}", "brand": brand, "categories": cats})
            if len(rows) == limit:
                break
    return pd.DataFrame(rows)


def test_the_bundle_lexical_index_is_saved_loaded_and_searched_within_the_rules(tmp_path):
    from prefmine.search.bundle import has_index, index_dir, load_bundle_searcher, save_bundle_index

    items = magazine_items()
    (tmp_path / "catalog").mkdir()
    items.to_parquet(tmp_path / "catalog" / "items.parquet", index=False)
    assert not has_index(tmp_path) and load_bundle_searcher(tmp_path, np.zeros((len(items), 4))) is None
    info = save_bundle_index(tmp_path)
    assert has_index(tmp_path) and info["items"] == len(items)
    assert not list(index_dir(tmp_path).rglob("*.pkl")) and not list(index_dir(tmp_path).rglob("*.pickle"))
    vecs = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    searcher = load_bundle_searcher(tmp_path, vecs)
    j = next(j for j in range(len(items)) if any(len(w) > 4 and w.isalpha() for w in items["title"][j].split()))
    word = max((w for w in items["title"][j].split() if w.isalpha()), key=len)
    pool = searcher.retrieve(word, vecs[j], 5)
    assert j in pool.idx.tolist() and pool.lexical[pool.idx.tolist().index(j)] > 0
    attrs = ItemAttributes.from_items(items)
    brand = items["brand"][j]
    rules = rules_of(pb.Rules(brands=[brand]), exclude_seen=False)
    pool = searcher.retrieve(word, vecs[j], 5, mask=allowed_mask(attrs, rules))
    assert len(pool.idx) and all(attrs.brand[i] == brand for i in pool.idx)
    assert j in pool.idx.tolist() and pool.qualifying == int((attrs.brand == brand).sum())
    assert dict(pool.facets["brand"]) == {brand: len(pool.matched)}  # facets count the matched set only


def test_the_bundle_index_takes_descriptions_from_the_data_sets_items(tmp_path):
    """The bundle's catalogue keeps no descriptions, so the ranker stage builds the BM25 index from the prepared
    data set's items: with `lexical_fields` naming the description, a word only an item's description holds
    finds it; from the catalogue alone it cannot; items that are not the catalogue's, in its order, are refused."""
    from prefmine.search.bundle import load_bundle_searcher, save_bundle_index
    from prefmine.search.config import SearchConfig

    items = magazine_items().head(300).copy()
    (tmp_path / "catalog").mkdir()
    items.to_parquet(tmp_path / "catalog" / "items.parquet", index=False)
    names = " ".join(f"{t} {b} {' '.join(c)}" for t, b, c in zip(items["title"], items["brand"], items["categories"]))
    word = "Zqxwvortlemagazine"  # a made-up word: in one item's description only
    assert word.casefold() not in names.casefold()
    with_text = items.assign(description=[f"A quarterly about {word} and more" if j == 7 else "" for j in range(300)])
    vecs = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    config = SearchConfig(lexical_fields=("title", "brand", "categories", "description"))

    info = save_bundle_index(tmp_path, config, with_text)
    assert info["lexical_fields"] == list(config.lexical_fields)
    pool = load_bundle_searcher(tmp_path, vecs).retrieve(word, vecs[0], 5)
    hit = pool.idx.tolist().index(7)  # found by its description; no other item matches the word
    assert pool.lexical[hit] > 0 and (pool.lexical > 0).sum() == 1
    save_bundle_index(tmp_path, config)  # the catalogue alone: no description to match
    pool = load_bundle_searcher(tmp_path, vecs).retrieve(word, vecs[0], 5)
    assert not (pool.lexical > 0).any()
    with pytest.raises(ValueError, match="order"):
        save_bundle_index(tmp_path, config, with_text.iloc[::-1])
