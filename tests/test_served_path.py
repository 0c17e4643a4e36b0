"""Serving feeds the ranker what training and evaluation feed it (items, event types, time gaps), and the
``served`` evaluation row is Recommend's own path (prefmine.serving.recommend). No Ray: a saved ranker with
untrained weights (its event-type and gap embeddings are random, so ignoring them changes the answer) and the
real runtime, policy and metrics code. The same lists over real gRPC: tests/test_serve.py
(test_recommend_serves_the_evaluated_lists)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_runtime_retrieval import write_bundle

from prefmine.metrics import top_k
from prefmine.ranker.model import GAP_UNKNOWN, gap_buckets
from prefmine.ranker.runtime import RankerRuntime
from prefmine.serving.history import RATE, History, as_history, ranker_inputs, with_recent
from prefmine.serving.policy import PolicyVersion
from prefmine.serving.ranking import candidates_for
from prefmine.serving.recommend import candidate_count, popular_items, recommend_slates
from prefmine.v1 import recommender_pb2 as pb

N_ITEMS = 300
DAY = 86400.0


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return RankerRuntime(write_bundle(tmp_path_factory.mktemp("served_path"), N_ITEMS, seed=5))


def histories(n: int = 20, seed: int = 0) -> list[History]:
    """Users with 2..25 events of mixed types, hours to weeks apart."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(2, 26))
        times = 1.5e9 + np.cumsum(rng.choice([60.0, 3600.0, DAY, 30 * DAY], m))
        out.append(History.of(rng.choice(N_ITEMS, m, replace=False), rng.integers(0, 5, m), times))
    return out


# -- the history a request is served from ---------------------------------------------------------------------
def test_recent_events_keep_their_type_and_time_after_the_stored_history():
    ev = SimpleNamespace
    stored = History.of([7, 8], [0, 3], [100.0, 200.0])
    recent = [ev(timestamp=900, item_id="c", type=pb.EVENT_TYPE_CART), ev(timestamp=400, item_id="zz", type=1),
              ev(timestamp=500, item_id="b", type=pb.EVENT_TYPE_VIEW),
              ev(timestamp=500, item_id="a", type=pb.EVENT_TYPE_BUY)]
    got = with_recent(stored, recent, {"a": 0, "b": 1, "c": 2}.get)
    assert got.items.tolist() == [7, 8, 1, 0, 2]  # timestamp order, ties in request order, unknown id left out
    assert got.events.tolist() == [0, 3, 0, 3, 2]  # view, buy, view, buy, cart (indices into EVENTS)
    assert got.times.tolist() == [100.0, 200.0, 500.0, 500.0, 900.0]
    assert with_recent(stored, (), {}.get) is stored
    # an item array (a caller that has only items) reads as `rate` at unknown times
    bare = with_recent(np.array([3]), [ev(timestamp=50, item_id="a", type=pb.EVENT_TYPE_CLICK)], {"a": 0}.get)
    assert bare.items.tolist() == [3, 0] and bare.events.tolist() == [RATE, 1]
    assert np.isnan(bare.times[0]) and bare.times[1] == 50.0


def test_a_history_names_what_does_not_line_up():
    with pytest.raises(ValueError, match="3 items but 2 events"):
        History.of([1, 2, 3], [0, 0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="events must be indices"):
        History.of([1], [7])


def test_an_unknown_time_makes_the_gaps_beside_it_unknown():
    known = gap_buckets(np.array([0.0, 60.0, 120.0, 3600.0]))
    got = gap_buckets(np.array([0.0, np.nan, 120.0, 3600.0]))
    assert got[0] == GAP_UNKNOWN and got[1] == GAP_UNKNOWN and got[2] == GAP_UNKNOWN
    assert got[3] == known[3] and known[1] != GAP_UNKNOWN  # the gaps between known times are unchanged


# -- the ranker reads them ------------------------------------------------------------------------------------
def test_serving_candidates_read_event_types_and_gaps_as_evaluation_does(runtime):
    hs = histories()
    cands = candidates_for(runtime, hs, [10] * len(hs), [set(h.items.tolist()) for h in hs])
    # evaluation's input path: RankerRuntime.scores with the data set's times and events
    full = runtime.scores([h.items for h in hs], [h.times for h in hs], [h.events for h in hs])
    want = top_k(full, 10, [set(h.items.tolist()) for h in hs])
    for c, w, row in zip(cands, want, full):
        assert c["idx"].tolist() == w.tolist()
        np.testing.assert_allclose(c["scores"], row[w], rtol=1e-5, atol=1e-6)
    states = np.stack([c["state"] for c in cands])
    np.testing.assert_allclose(states, runtime.user_states(**ranker_inputs(hs)), rtol=1e-5, atol=1e-6)
    # and they matter: the same items as `rate` at unknown times (what serving fed before) give other states
    items_only = runtime.user_states([h.items for h in hs])
    assert np.abs(items_only - states).max() > 1e-3
    no_types = runtime.user_states([h.items for h in hs], [h.times for h in hs])
    assert np.abs(no_types - states).max() > 1e-3


# -- Recommend's slate, as the served row computes it ---------------------------------------------------------
def test_recommend_slates_are_the_ranker_order_under_a_greedy_policy(runtime):
    hs = histories(seed=1)
    greedy = PolicyVersion(None)
    got = recommend_slates(runtime, greedy, hs, k=20)
    ex = [set(h.items.tolist()) for h in hs]
    want = top_k(runtime.scores(**ranker_inputs(hs)), 20, ex)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    assert all(not set(g.tolist()) & e for g, e in zip(got, ex))
    # a request's excluded items stay out too, and batching the ranker calls does not change a slate
    extra = [set(w[:3].tolist()) for w in want]
    one = recommend_slates(runtime, greedy, hs, k=20, excludes=extra)
    assert [o[:17].tolist() for o in one] == [w[3:].tolist() for w in want]
    batched = recommend_slates(runtime, greedy, hs, k=20, excludes=extra, batch=16)
    assert [b.tolist() for b in batched] == [o.tolist() for o in one]


def test_candidate_count_and_the_cold_start_list():
    assert candidate_count(5, 100, 1000, 10) == 100
    assert candidate_count(500, 100, 1000, 10) == 500
    assert candidate_count(5, 100, 50, 10) == 40 and candidate_count(5, 100, 50, 50) == 0
    assert popular_items(np.array([1.0, 5.0, 5.0, 0.0]), 3, {1}).tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match="at least one event"):
        recommend_slates(None, None, [History.of([])], k=3)


def test_as_history_passes_a_history_through():
    h = History.of([1, 2])
    assert as_history(h) is h and as_history(np.array([4])).events.tolist() == [RATE]
