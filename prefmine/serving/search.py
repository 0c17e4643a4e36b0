"""Search's ordering when a bundle has no lexical index (dense retrieval): the encoder's text similarity blended
with the user's ranker relevance, and the scores of a Search answer whichever retrieval made it.

A known user's final score is the mean of the two, each standardised over the retrieved items (their scales
differ: cosine in [-1, 1], ranker logits unbounded); a user without history gets the text similarity alone.
(Hybrid retrieval, BM25 fused with the dense encoder, is prefmine.search's.)
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class SearchScores:
    """Search's candidates, best first, with the scores the answer shows: ``score`` (final), ``text`` (dense
    cosine), ``lexical`` (BM25, 0 without a lexical index) and ``relevance`` (the ranker's, 0 for a cold user)."""

    idx: np.ndarray
    score: np.ndarray
    text: np.ndarray
    lexical: np.ndarray
    relevance: np.ndarray

    def rows(self, items: np.ndarray) -> list[tuple[float, float, float, float]]:
        """(score, text, lexical, relevance) of each of ``items``; zeros for an item not among the candidates (a
        pinned item the query did not retrieve)."""
        at = {int(i): j for j, i in enumerate(np.asarray(self.idx).tolist())}
        out = []
        for i in np.asarray(items).tolist():
            j = at.get(int(i))
            out.append((0.0, 0.0, 0.0, 0.0) if j is None else
                       (float(self.score[j]), float(self.text[j]), float(self.lexical[j]), float(self.relevance[j])))
        return out
