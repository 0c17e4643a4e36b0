"""Choosing the fusion and personalisation weights on labelled validation queries, and the relevance metrics
(one relevant item per query: NDCG@k = 1 / log2(rank + 1) when the item is in the top k, Recall@k = hit)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from prefmine.search.config import FUSIONS, SearchConfig
from prefmine.search.engine import Pool
from prefmine.search.fusion import fuse, personalise

# tenths, and finer near both ends, where one retriever mostly breaks the other's ties
WEIGHTS = tuple(sorted({round(w, 2) for w in np.linspace(0.0, 1.0, 11)} | {0.01, 0.02, 0.05, 0.95, 0.98, 0.99}))
PERSONAL_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 0.9, 19))


def target_rank(idx: np.ndarray, scores: np.ndarray, target: int) -> int | None:
    """1-based rank of `target` among the pool (highest score first, ties by item index); None if absent."""
    where = np.flatnonzero(idx == target)
    if len(where) == 0:
        return None
    j = int(where[0])
    s = scores[j]
    return int(np.sum(scores > s) + np.sum((scores == s) & (idx < target)) + 1)


def metrics(ranks: list[int | None], k: int = 10) -> dict[str, float]:
    r = np.array([np.inf if x is None else x for x in ranks], dtype=np.float64)
    hit = r <= k
    ndcg = np.where(hit, 1.0 / np.log2(np.where(hit, r, 1.0) + 1.0), 0.0)
    return {f"NDCG@{k}": float(ndcg.mean()) if len(r) else 0.0,
            f"Recall@{k}": float(hit.mean()) if len(r) else 0.0, "queries": int(len(r))}


def ndcg_per_query(ranks: list[int | None], k: int = 10) -> np.ndarray:
    """Each query's NDCG@k (one relevant item: 1 / log2(rank + 1) inside the top k, else 0)."""
    r = np.array([np.inf if x is None else x for x in ranks], dtype=np.float64)
    hit = r <= k
    return np.where(hit, 1.0 / np.log2(np.where(hit, r, 1.0) + 1.0), 0.0)


def pool_ranks(pools: list[Pool], targets, config: SearchConfig, personal: list | None = None) -> list[int | None]:
    """The target's rank in each pool under `config`'s fusion (and personalisation, with `personal[i]` the user's
    scores for `pools[i].idx`); None where the target is not in the pool."""
    ranks = []
    for i, (pool, t) in enumerate(zip(pools, targets)):
        fused = fuse(pool.lexical, pool.dense, config.fusion, config.lexical_weight, config.rrf_k)
        final = personalise(fused, None if personal is None else personal[i], config.personal_weight)
        ranks.append(target_rank(pool.idx, final, int(t)))
    return ranks


def score_pools(pools: list[Pool], targets, config: SearchConfig, personal: list | None = None,
                k: int = 10) -> dict[str, float]:
    """The metrics of `config`'s fusion (and personalisation) over the queries (see pool_ranks)."""
    return metrics(pool_ranks(pools, targets, config, personal), k)


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, groups=None, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of mean(a) - mean(b) for per-query values measured on the same queries, both
    on every resample. `groups` (one label per query, e.g. its user): resample whole groups instead of queries, for
    queries that are not independent. Returns {"mean_diff", "low", "high", "n_boot", "units"}."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap: a and b must be equal-length non-empty vectors, got {a.shape}, {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    if groups is None:
        units, sums, counts = len(d), d, np.ones(len(d))
    else:
        _, g = np.unique(np.asarray(groups), return_inverse=True)
        units = int(g.max()) + 1
        sums, counts = np.bincount(g, weights=d, minlength=units), np.bincount(g, minlength=units).astype(float)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(0, units, units)
        draws[i] = sums[pick].sum() / counts[pick].sum()
    tail = (1.0 - level) / 2.0 * 100.0
    return {"mean_diff": float(d.mean()), "low": float(np.percentile(draws, tail)),
            "high": float(np.percentile(draws, 100.0 - tail)), "n_boot": int(n_boot), "units": int(units)}


def choose_weights(pools: list[Pool], targets, config: SearchConfig, personal: list | None = None,
                   k: int = 10, fusions=FUSIONS) -> tuple[SearchConfig, list[dict]]:
    """The fusion and lexical weight with the best NDCG@k on the validation queries (without personalisation),
    then, when personal scores are given, the personalisation weight on top of it. Ties keep the earlier grid
    point. Returns the chosen config and every point tried."""
    tried = []
    best, best_ndcg = config, -1.0
    for fusion in fusions:
        for w in WEIGHTS:
            cfg = replace(config, fusion=fusion, lexical_weight=w, personal_weight=0.0)
            m = score_pools(pools, targets, cfg, None, k)
            tried.append({"fusion": fusion, "lexical_weight": w, "personal_weight": 0.0, **m})
            if m[f"NDCG@{k}"] > best_ndcg:
                best, best_ndcg = cfg, m[f"NDCG@{k}"]
    if personal is not None:
        base = best
        for pw in PERSONAL_WEIGHTS[1:]:
            cfg = replace(base, personal_weight=pw)
            m = score_pools(pools, targets, cfg, personal, k)
            tried.append({"fusion": cfg.fusion, "lexical_weight": cfg.lexical_weight, "personal_weight": pw, **m})
            if m[f"NDCG@{k}"] > best_ndcg:
                best, best_ndcg = cfg, m[f"NDCG@{k}"]
    return best, tried
