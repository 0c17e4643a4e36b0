"""Top-K ranking metrics for the evaluation protocol in DESIGN.md.

`ranking_metrics(topk, targets, ks, n_items)`: `topk` is [n_users, max_k] item indices in rank order, `targets`
an integer array (one relevant item per user: leave-one-out) or a list of sets of relevant items per user.
Per user, at cut-off K:
  Recall@K = |hits| / |relevant| (= HR@K with one target)     Precision@K = |hits| / K
  F1@K = 2PR / (P + R)                                          MRR@K = 1 / rank of the first hit (0 if none)
  NDCG@K = sum_{hit at rank r} 1/log2(r + 1) / IDCG, IDCG = sum_{r=1..min(|rel|,K)} 1/log2(r + 1)
averaged over users; Coverage@K = distinct items recommended in anyone's top K / n_items.
"""

from __future__ import annotations

import numpy as np

KS = (5, 10, 20)  # the headline cut-offs of DESIGN.md
CURVE_KS = tuple(range(1, 21))  # the NDCG@K curve of the evaluation report


def ranking_metrics(topk: np.ndarray, targets, ks=KS, n_items: int | None = None) -> dict[str, float]:
    """Mean metrics over users at every K in `ks`. Vectorised: one hit matrix and running sums over the ranks,
    so many cut-offs (the NDCG@K curve, K = 1..20) cost about as much as one."""
    topk = np.asarray(topk, dtype=np.int64)
    n = len(targets)
    out: dict[str, float] = {}
    if n == 0:
        return out
    if topk.ndim != 2 or topk.shape[0] != n:
        raise ValueError(f"topk: expected shape [n_users={n}, max_k], got {topk.shape}")
    ks = [int(k) for k in ks]
    width = topk.shape[1]
    hits, n_rel = _hits(topk, targets)
    discounts = 1.0 / np.log2(np.arange(2, max(width, *ks) + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal[r] = IDCG with r relevant items
    cum_hits = np.concatenate([np.zeros((n, 1)), np.cumsum(hits, 1)], 1)  # [:, k] = hits in the top k
    cum_dcg = np.concatenate([np.zeros((n, 1)), np.cumsum(hits * discounts[:width], 1)], 1)
    first = np.where(hits.any(1), hits.argmax(1) + 1, 0)  # rank of the first hit, 0 if none
    rel = np.maximum(n_rel, 1)
    if n_items:
        seen = _first_column(topk)  # for each distinct item, the first rank (column) it appears at
    for k in ks:
        col = min(k, width)
        n_hit = cum_hits[:, col]
        recall = n_hit / rel
        precision = n_hit / k
        f1 = np.where(n_hit > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        ndcg = cum_dcg[:, col] / np.maximum(ideal[np.minimum(n_rel, k)], 1e-12)
        mrr = np.where((first > 0) & (first <= k), 1.0 / np.maximum(first, 1), 0.0)
        out[f"Recall@{k}"] = float(recall.mean())
        out[f"HR@{k}"] = float((n_hit > 0).mean())
        out[f"Precision@{k}"] = float(precision.mean())
        out[f"F1@{k}"] = float(f1.mean())
        out[f"NDCG@{k}"] = float(ndcg.mean())
        out[f"MRR@{k}"] = float(mrr.mean())
        if n_items:
            out[f"Coverage@{k}"] = float((seen < k).sum() / n_items)
    return out


def _hits(topk: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [n_users, max_k] hit matrix and the number of relevant items per user. `targets` is an integer
    array (one relevant item per user) or a list of sets / ints; membership is one `np.isin` on (user, item) keys."""
    n = topk.shape[0]
    collections = (set, frozenset, list, tuple, np.ndarray)
    if not (isinstance(targets, np.ndarray) and targets.dtype.kind in "iu" and targets.ndim == 1):
        if not any(isinstance(t, collections) for t in targets):
            targets = np.fromiter((int(t) for t in targets), dtype=np.int64, count=n)
    if isinstance(targets, np.ndarray) and targets.ndim == 1 and targets.dtype.kind in "iu":
        return topk == targets[:, None], np.ones(n, dtype=np.int64)
    sets = [t if isinstance(t, collections) else (int(t),) for t in targets]
    n_rel = np.fromiter((len(set(t)) for t in sets), dtype=np.int64, count=n)
    users = np.repeat(np.arange(n, dtype=np.int64), [len(t) for t in sets])
    items = np.fromiter((int(x) for t in sets for x in t), dtype=np.int64, count=len(users))
    span = int(max(topk.max(initial=0), items.max(initial=0))) + 1
    row = np.arange(n, dtype=np.int64)[:, None] * span
    return np.isin(topk + row, users * span + items), n_rel


def _first_column(topk: np.ndarray) -> np.ndarray:
    """For each distinct item in `topk`, the first column (0-based rank) where any user has it."""
    _, first = np.unique(topk.T.ravel(), return_index=True)  # column-major: the first index is the first column
    return first // topk.shape[0]


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
