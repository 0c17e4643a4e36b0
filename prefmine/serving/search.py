"""Search's ordering: the encoder's text similarity blended with the user's ranker relevance.

A known user's final score is the mean of the two, each standardised over the retrieved items (their scales
differ: cosine in [-1, 1], ranker logits unbounded); a user without history gets the text similarity alone.
"""

from __future__ import annotations

import numpy as np

from prefmine.serving.vectors import zscore


def blend(text: np.ndarray, relevance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(final score, relevance) per retrieved item; ``relevance`` None means a cold user (relevance 0 each)."""
    text = np.asarray(text, dtype=np.float64)
    if relevance is None:
        return text, np.zeros(len(text))
    relevance = np.asarray(relevance, dtype=np.float64)
    return 0.5 * zscore(text) + 0.5 * zscore(relevance), relevance


def search_order(final: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best final scores, best first, ties to the earlier (better text) position."""
    return np.lexsort((np.arange(len(final)), -np.asarray(final)))[:k]
