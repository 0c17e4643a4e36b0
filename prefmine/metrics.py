"""Top-K ranking metrics for the evaluation protocol in DESIGN.md.

`ranking_metrics(topk, targets, ks, n_items)`: `topk` is [n_users, max_k] item indices in rank order, `targets` a
list of sets of relevant items per user (one item under leave-one-out). Per user, at cut-off K:
  Recall@K = |hits| / |relevant| (= HR@K with one target)     Precision@K = |hits| / K
  F1@K = 2PR / (P + R)                                          MRR@K = 1 / rank of the first hit (0 if none)
  NDCG@K = sum_{hit at rank r} 1/log2(r + 1) / IDCG, IDCG = sum_{r=1..min(|rel|,K)} 1/log2(r + 1)
averaged over users; Coverage@K = distinct items recommended in anyone's top K / n_items.
"""

from __future__ import annotations

import numpy as np

KS = (5, 10, 20)


def ranking_metrics(topk: np.ndarray, targets, ks=KS, n_items: int | None = None) -> dict[str, float]:
    topk = np.asarray(topk)
    targets = [t if isinstance(t, (set, frozenset)) else {int(t)} for t in targets]
    n = len(targets)
    out: dict[str, float] = {}
    if n == 0:
        return out
    discounts = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    hits = np.array([[int(x) in t for x in row] for row, t in zip(topk, targets)], dtype=bool)
    n_rel = np.array([len(t) for t in targets], dtype=np.float64)
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        recall = n_hit / np.maximum(n_rel, 1)
        precision = n_hit / k
        f1 = np.where(n_hit > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        dcg = (h * discounts[:k]).sum(1)
        idcg = np.array([discounts[: int(min(r, k))].sum() for r in n_rel])
        ndcg = dcg / np.maximum(idcg, 1e-12)
        first = np.where(h.any(1), h.argmax(1) + 1, 0)
        mrr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
        out[f"Recall@{k}"] = float(recall.mean())
        out[f"HR@{k}"] = float((n_hit > 0).mean())
        out[f"Precision@{k}"] = float(precision.mean())
        out[f"F1@{k}"] = float(f1.mean())
        out[f"NDCG@{k}"] = float(ndcg.mean())
        out[f"MRR@{k}"] = float(mrr.mean())
        if n_items:
            out[f"Coverage@{k}"] = float(len(np.unique(topk[:, :k])) / n_items)
    return out


def top_k(scores: np.ndarray, k: int, exclude: list | None = None) -> np.ndarray:
    """Indices of the k best scores per row, after setting excluded items to -inf (full catalogue ranking)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None:
        for row, ex in enumerate(exclude):
            if ex is not None and len(ex):
                scores[row, np.fromiter(ex, dtype=np.int64)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)  # ties: lower item index first
    return np.take_along_axis(part, order, 1)
