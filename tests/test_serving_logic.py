"""prefmine.serving without Ray: the maths behind each RPC on small arrays whose answers are worked out by hand."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from prefmine.serving import ranking, responses
from prefmine.serving.history import with_recent
from prefmine.serving.policy import PolicyVersion, clean_slate, greedy_order
from prefmine.serving.rank import expected_value_order, rank_candidates
from prefmine.serving.search import SearchScores, blend, search_order
from prefmine.serving.slate import logged_propensities, slate_relevance, slate_scores
from prefmine.serving.vectors import nearest_rows, top_by_similarity, unit_rows, zscore
from prefmine.v1 import recommender_pb2 as pb

CATALOGUE = SimpleNamespace(item_ids=["a", "b", "c", "d"], titles=["A", "B", "", "D"], version="v7")


# -- vectors ----------------------------------------------------------------------------------------------------
def test_unit_rows_scales_each_row_and_leaves_a_zero_row_zero():
    u = unit_rows([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(u, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], rtol=1e-6)
    assert u.dtype == np.float32


def test_zscore_standardises_and_is_zero_for_equal_scores():
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-8)
    assert zscore(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]


def test_top_by_similarity_orders_best_first_ties_to_the_lower_index():
    got = top_by_similarity(np.array([0.1, 0.9, 0.5, 0.9, -1.0]), 3)
    assert got["idx"].tolist() == [1, 3, 2]
    np.testing.assert_allclose(got["sims"], [0.9, 0.9, 0.5], rtol=1e-6)
    many = np.zeros(200)
    many[[150, 7, 99]] = [1.0, 1.0, 0.5]
    got = top_by_similarity(many, 40)["idx"].tolist()
    assert got[:3] == [7, 150, 99] and got[3:] == sorted(got[3:]) and len(set(got)) == 40  # equal ones by index
    assert top_by_similarity(np.array([0.2, 0.1]), 10)["idx"].tolist() == [0, 1]  # n above the catalogue
    assert top_by_similarity(np.array([0.2, 0.1]), 0)["idx"].tolist() == []


def test_nearest_rows_is_cosine_whatever_the_query_norm():
    unit = unit_rows([[1, 0], [0, 1], [1, 1], [-1, 0]])
    got = nearest_rows(unit, np.array([10.0, 1.0]), 2)
    assert got["idx"].tolist() == [0, 2]
    np.testing.assert_allclose(got["sims"], [10 / np.sqrt(101), 11 / np.sqrt(202)], rtol=1e-5)


# -- ranking ----------------------------------------------------------------------------------------------------
def test_cut_candidates_cuts_each_row_to_its_n_and_drops_padding():
    idx = np.array([[4, 2, 7, -1], [1, 3, 0, 5]])
    scores = np.array([[0.9, 0.8, -np.inf, -np.inf], [0.7, 0.6, 0.5, 0.4]])
    states = np.array([[1.0, 2.0], [3.0, 4.0]])
    rows = ranking.cut_candidates(idx, scores, states, [4, 2])
    assert rows[0]["idx"].tolist() == [4, 2] and rows[1]["idx"].tolist() == [1, 3]
    np.testing.assert_allclose(rows[0]["scores"], [0.9, 0.8], rtol=1e-6)
    assert rows[1]["state"].tolist() == [3.0, 4.0] and rows[1]["state"].dtype == np.float32


def test_item_scores_are_a_softmax_over_the_whole_catalogue():
    scores = np.array([1.0, 2.0, 3.0, 0.0])
    got = ranking.item_scores(scores, np.array([2, 0]))
    z = np.exp(scores).sum()
    np.testing.assert_allclose(got["probs"], [np.exp(3) / z, np.exp(1) / z], rtol=1e-12)
    np.testing.assert_allclose(got["scores"], [3.0, 1.0])
    big = ranking.item_scores(np.array([1000.0, 999.0]), np.array([0, 1]))["probs"]  # no overflow
    np.testing.assert_allclose(big, [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], rtol=1e-12)


def test_similar_items_leave_the_item_out():
    v = unit_rows([[1, 0], [1, 0.1], [0, 1], [1, 0.5]])
    got = ranking.similar_items(v, 0, 2)
    assert got["idx"].tolist() == [1, 3]
    assert 0 not in ranking.similar_items(v, 0, 10)["idx"].tolist()
    assert len(ranking.similar_items(v, 0, 10)["idx"]) == 3
    assert ranking.similar_items(unit_rows([[1.0, 0.0]]), 0, 5)["idx"].tolist() == []  # a one-item catalogue


def test_preference_summarises_the_state():
    state = np.array([3.0, 4.0])
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    got = ranking.preference(state, items, top=3)
    assert got["dim"] == 2 and got["norm"] == pytest.approx(5.0)
    assert got["top"].tolist() == [2, 1, 3]  # scores 7, 4, 4, 3: the tie goes to the lower index


def test_nearest_sources_names_the_closest_history_item():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    src, sims = ranking.nearest_sources(vectors, np.array([1, 0, 1]), np.array([2, 3]))
    assert src.tolist() == [0, 1]
    np.testing.assert_allclose(sims, [0.9 / np.hypot(0.9, 0.1)] * 2, rtol=1e-5)


# -- policy and slate -------------------------------------------------------------------------------------------
def test_greedy_policy_orders_by_ranker_score():
    policy = PolicyVersion(None)
    cands, scores = np.array([10, 11, 12, 13]), np.array([0.1, 0.9, 0.5, 0.7])
    slate, props = policy.select(None, cands, scores, 3, return_propensities=True)
    assert slate.tolist() == [11, 13, 12] and props.tolist() == [1.0, 1.0, 1.0]
    assert policy.select(None, cands, scores, 10).tolist() == [11, 13, 12, 10]
    assert policy.select(None, cands[:0], scores[:0], 3).tolist() == []
    assert policy.label == "greedy"
    assert greedy_order(np.array([5, 6, 7]), np.array([0.5, 0.5, 0.9])).tolist() == [7, 5, 6]  # stable ties


def test_a_bundle_dir_without_policy_is_greedy_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        policy = PolicyVersion(str(tmp_path))
    assert policy.kind == "greedy" and policy.runtime is None
    assert "has no policy/" in caplog.text


def test_clean_slate_drops_non_candidates_and_repeats_keeping_the_first_propensity():
    clean, props = clean_slate([12, 12, 99, 10], [0.8, 0.3, 0.2, 0.6], np.array([10, 11, 12]))
    assert clean == [12, 10] and props == [0.8, 0.6]


def test_slate_numbers():
    assert slate_scores(np.array([0.2, 0.9, 0.5])).tolist() == [0.9, 0.5, 0.2]
    assert slate_relevance(np.array([4, 7, 9]), np.array([0.3, 0.2, 0.1]), np.array([9, 4])).tolist() == [
        pytest.approx(0.1), pytest.approx(0.3)]
    assert logged_propensities([0.5, 1.0000000002, 1]) == [0.5, 1.0, 1.0]


# -- search and rank ----------------------------------------------------------------------------------------------
def test_search_blend_averages_standardised_scores_and_cold_users_get_text_only():
    text = np.array([0.9, 0.5, 0.1])
    final, rel = blend(text, None)
    assert final.tolist() == [0.9, 0.5, 0.1] and rel.tolist() == [0.0, 0.0, 0.0]
    final, rel = blend(text, np.array([1.0, 3.0, 2.0], dtype=np.float32))
    z = np.sqrt(1.5)  # z-scores of [1, 0, -1] and [-1, 1, 0] spread over 3 items
    np.testing.assert_allclose(final, [0.0, 0.5 * z, -0.5 * z], atol=1e-12)
    assert search_order(final, 2).tolist() == [1, 0]
    assert search_order(np.array([0.0, 1.0, 1.0, 0.0]), 4).tolist() == [1, 2, 0, 3]  # ties to the earlier


def test_rank_candidates_dedupe_keep_first_bid_and_set_unknown_apart():
    index = {"a": 0, "b": 1, "c": 2}.get
    c = rank_candidates(["b", "zz", "a", "b", "c"], [2.0, 9.0, 1.0, 5.0, 4.0], index)
    assert c.items.tolist() == [1, 0, 2] and c.raw_ids == ["b", "a", "c"]
    assert c.positions.tolist() == [0, 2, 4] and c.bids.tolist() == [2.0, 1.0, 4.0] and c.unknown == ["zz"]
    assert rank_candidates(["a", "b"], [], index).bids.tolist() == [1.0, 1.0]  # no bids: 1.0 each
    ev, order = expected_value_order(np.array([0.125, 0.5, 0.125]), c.bids, c.positions)
    assert ev.tolist() == [0.25, 0.5, 0.5]
    assert order.tolist() == [1, 2, 0]  # 0.5 twice: request order


# -- history and responses ------------------------------------------------------------------------------------------
def test_recent_events_follow_the_history_in_timestamp_order():
    ev = SimpleNamespace
    recent = [ev(timestamp=30, item_id="c"), ev(timestamp=10, item_id="zz"), ev(timestamp=20, item_id="b"),
              ev(timestamp=20, item_id="a")]
    got = with_recent(np.array([3]), recent, {"a": 0, "b": 1, "c": 2}.get)
    assert got.items.tolist() == [3, 1, 0, 2] and got.items.dtype == np.int64
    assert with_recent([5, 6], (), {}.get).items.tolist() == [5, 6]


def test_responses_carry_ids_titles_and_version():
    r = responses.recommend_response(CATALOGUE, np.array([3, 0]), np.array([0.5, 0.25]), cold_start=True,
                                     placement="home")
    assert [(i.item_id, i.title, i.score) for i in r.items] == [("d", "D", 0.5), ("a", "A", 0.25)]
    assert r.bundle_version == "v7" and r.cold_start and r.placement == "home"
    cands = rank_candidates(["c", "a"], [2.0, 1.0], {"a": 0, "c": 2}.get)
    rank = responses.rank_response(CATALOGUE, cands, np.array([0.1, 0.4]), np.array([0.2, 0.4]),
                                   np.array([1, 0]), cold_start=False)
    assert [(i.item_id, i.bid, i.expected_value) for i in rank.items] == [("a", 1.0, pytest.approx(0.4)),
                                                                         ("c", 2.0, pytest.approx(0.2))]
    sim = responses.similar_response(CATALOGUE, np.array([2]), np.array([0.75]))
    assert sim.items[0].item_id == "c" and sim.items[0].title == "" and sim.items[0].similarity == 0.75
    scored = SearchScores(np.array([3, 1]), np.array([1.0, 0.5]), np.array([0.5, 0.25]), np.array([0.0, 4.0]),
                          np.array([2.0, 0.0]))
    s = responses.search_response(CATALOGUE, scored, np.array([3, 1, 0]), cold_start=False,
                                  facets={"brand": [("B", 2)], "category": [("X", 3)]}, retrieval="hybrid")
    assert [(x.item_id, x.score, x.text_score, x.lexical_score, x.relevance) for x in s.results] == [
        ("d", 1.0, 0.5, 0.0, 2.0), ("b", 0.5, 0.25, 4.0, 0.0), ("a", 0.0, 0.0, 0.0, 0.0)]  # a: pinned, not retrieved
    assert [(f.field, f.value, f.count) for f in s.facets] == [("brand", "B", 2), ("category", "X", 3)]
    assert s.retrieval == "hybrid" and not s.cold_start


def test_component_infos_list_the_known_components_first_with_scalar_attributes():
    comps = responses.component_infos({"components": {
        "zeta": "z1", "policy": {"kind": "learned", "epsilon": 0.1}, "encoder": {"version": "e2", "dim": 64,
                                                                                "layers": [1, 2]}}})
    assert [c.name for c in comps] == ["encoder", "policy", "zeta"]
    assert comps[0].version == "e2" and dict(comps[0].attributes) == {"dim": "64"}
    assert comps[1].version == "learned" and dict(comps[1].attributes) == {"kind": "learned", "epsilon": "0.1"}
    assert comps[2].version == "z1" and isinstance(comps[2], pb.ComponentInfo)
    assert responses.component_infos({}) == []
