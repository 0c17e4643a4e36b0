"""Fusing score lists over one candidate pool: a min-max-normalised linear mix or reciprocal-rank fusion (RRF),
and the personalisation mix that follows."""

from __future__ import annotations

import numpy as np


def minmax(x: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over the pool (all zeros when they are all equal)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based rank of each score, highest first, ties by position."""
    order = np.lexsort((np.arange(len(x)), -np.asarray(x, dtype=np.float64)))
    r = np.empty(len(x), dtype=np.int64)
    r[order] = np.arange(1, len(x) + 1)
    return r


def linear(lexical: np.ndarray, dense: np.ndarray, lexical_weight: float) -> np.ndarray:
    return lexical_weight * minmax(lexical) + (1.0 - lexical_weight) * minmax(dense)


def rrf(lexical: np.ndarray, dense: np.ndarray, lexical_weight: float, k: int) -> np.ndarray:
    """Weighted reciprocal-rank fusion; an item no query term matched (lexical score 0) gets no lexical share."""
    lex = np.where(np.asarray(lexical) > 0, lexical_weight / (k + ranks(lexical)), 0.0)
    return lex + (1.0 - lexical_weight) / (k + ranks(dense))


def fuse(lexical: np.ndarray, dense: np.ndarray, method: str, lexical_weight: float, rrf_k: int) -> np.ndarray:
    if method == "rrf":
        return rrf(lexical, dense, lexical_weight, rrf_k)
    return linear(lexical, dense, lexical_weight)


def personalise(fused: np.ndarray, personal: np.ndarray | None, weight: float) -> np.ndarray:
    """The query's fused score mixed with the user's ranker scores (both min-max-normalised over the pool);
    unchanged without personal scores or weight."""
    if personal is None or weight <= 0.0:
        return np.asarray(fused, dtype=np.float64)
    return (1.0 - weight) * minmax(fused) + weight * minmax(personal)
