"""Ranking metrics against hand-computed values, and the baselines on a toy log."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefmine.baselines import ItemKNN, Popularity
from prefmine.metrics import ranking_metrics, top_k


def test_single_target_metrics_by_hand():
    topk = np.array([[3, 1, 2, 0, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    targets = [1, 9, 4]  # hit at rank 2, miss, hit at rank 1
    m = ranking_metrics(topk, targets, ks=(1, 5), n_items=10)
    assert m["Recall@5"] == pytest.approx(2 / 3)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["Precision@5"] == pytest.approx((1 / 5 + 0 + 1 / 5) / 3)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 0 + 1.0) / 3)
    assert m["MRR@5"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    f1 = 2 * (1 / 5) * 1 / (1 / 5 + 1)
    assert m["F1@5"] == pytest.approx((f1 + 0 + f1) / 3)
    assert m["Recall@1"] == pytest.approx(1 / 3) and m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["Coverage@1"] == pytest.approx(3 / 10) and m["Coverage@5"] == pytest.approx(5 / 10)


def test_multi_target_ndcg_by_hand():
    m = ranking_metrics(np.array([[5, 7, 6]]), [{6, 7, 8}], ks=(3,))
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["NDCG@3"] == pytest.approx(dcg / idcg)
    assert m["Recall@3"] == pytest.approx(2 / 3) and m["Precision@3"] == pytest.approx(2 / 3)
    assert m["MRR@3"] == pytest.approx(1 / 2)


def test_top_k_excludes_history_and_orders():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.2, 0.3]])
    assert top_k(scores, 2).tolist() == [[1, 3], [0, 3]]
    assert top_k(scores, 3, [{1}, set()]).tolist() == [[3, 2, 0], [0, 3, 2]]
    assert top_k(np.array([[0.5, 0.9, 0.5, 0.5, 0.1]]), 4).tolist() == [[1, 0, 2, 3]]  # ties by item index


def test_baselines_on_a_toy_log():
    seqs = [np.array([0, 1]), np.array([0, 1, 2]), np.array([2, 3]), np.array([0])]
    pop = Popularity(5, seqs)
    assert pop.counts.tolist() == [3, 2, 2, 1, 0]
    knn = ItemKNN(5, seqs)
    s = knn.scores([np.array([0])])[0]
    # item 1 co-occurs with 0 in two users: cos = 2 / sqrt(3 * 2); item 2 once: 1 / sqrt(3 * 2)
    assert s[1] == pytest.approx(2 / math.sqrt(6), rel=1e-5) and s[2] == pytest.approx(1 / math.sqrt(6), rel=1e-5)
    assert s[3] == 0 and s[4] == 0


def _reference_metrics(topk, targets, k, n_items):
    """The definitions of prefmine/metrics.py written as a plain loop over users, to check the vectorised code."""
    rows = []
    for row, rel in zip(topk.tolist(), targets):
        rel = set(rel)
        hit = [x in rel for x in row[:k]]
        n_hit = sum(hit)
        p, r = n_hit / k, n_hit / max(len(rel), 1)
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hit) if h)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        first = next((i + 1 for i, h in enumerate(hit) if h), 0)
        rows.append((r, float(n_hit > 0), p, 2 * p * r / (p + r) if n_hit else 0.0, dcg / idcg if idcg else 0.0,
                     1 / first if first else 0.0))
    names = ("Recall", "HR", "Precision", "F1", "NDCG", "MRR")
    out = {f"{m}@{k}": float(np.mean([r[i] for r in rows])) for i, m in enumerate(names)}
    out[f"Coverage@{k}"] = len({x for row in topk.tolist() for x in row[:k]}) / n_items
    return out


@pytest.mark.parametrize("multi", [False, True])
def test_vectorised_metrics_match_a_plain_loop_at_every_k(multi):
    rng = np.random.default_rng(3)
    topk = np.stack([rng.choice(40, 20, replace=False) for _ in range(200)])
    single = np.where(rng.random(200) < 0.5, topk[np.arange(200), rng.integers(0, 20, 200)], rng.integers(0, 40, 200))
    targets = [set(rng.choice(40, rng.integers(0, 4), replace=False).tolist()) for _ in range(200)] if multi \
        else single
    m = ranking_metrics(topk, targets, ks=range(1, 21), n_items=50)
    for k in range(1, 21):
        ref = _reference_metrics(topk, [t if multi else {t} for t in targets], k, 50)
        for key, value in ref.items():
            assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m == ranking_metrics(topk, list(targets), ks=range(1, 21), n_items=50)  # list input, same path
