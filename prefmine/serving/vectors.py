"""Vector helpers shared by the serving paths: unit rows, standardised scores, the most similar rows."""

from __future__ import annotations

import numpy as np


def unit_rows(v) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; an all-zero row stays zero)."""
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardised scores (all 0 when every score is equal), so two scales can be averaged."""
    sd = float(np.std(x))
    return (x - np.mean(x)) / sd if sd > 0 else np.zeros_like(x)


def top_by_similarity(sims: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The n highest similarities, best first, equal ones by index: ``idx`` (int64) and ``sims`` (float32).

    Which of several equal similarities at the cut-off make it into the n is not defined (a partition)."""
    n = min(int(n), len(sims))
    if n <= 0:
        return {"idx": np.zeros(0, np.int64), "sims": np.zeros(0, np.float32)}
    idx = np.argpartition(-sims, n - 1)[:n]
    idx = idx[np.lexsort((idx, -sims[idx]))]
    return {"idx": idx.astype(np.int64), "sims": sims[idx].astype(np.float32)}


def nearest_rows(unit: np.ndarray, query: np.ndarray, n: int, allowed: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
    """The n rows of ``unit`` (unit rows) closest in cosine to ``query`` (any norm); with ``allowed`` (a boolean
    mask over the rows), among those rows only (fewer than n when fewer are allowed)."""
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    sims = unit @ q
    if allowed is None:
        return top_by_similarity(sims, n)
    allowed = np.asarray(allowed, dtype=bool)
    sims = np.where(allowed, sims, -np.inf)
    return top_by_similarity(sims, min(int(n), int(allowed.sum())))
