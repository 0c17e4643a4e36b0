"""A Recommend slate's numbers: the relevance of each slot, the scores shown, the propensities logged."""

from __future__ import annotations

import numpy as np


def slate_scores(relevance: np.ndarray) -> np.ndarray:
    """Scores for a slate in the policy's order: the slate's relevance scores sorted descending.

    The policy may promote an item above a higher-scored one; the response promises non-increasing scores, so
    position i carries the i-th highest relevance within the slate (identical to the relevance when the policy
    keeps the ranker's order).
    """
    return np.sort(np.asarray(relevance, dtype=np.float64))[::-1]


def slate_relevance(candidates: np.ndarray, scores: np.ndarray, slate: np.ndarray) -> np.ndarray:
    """The ranker's score of each slate item, looked up among the candidates it was chosen from."""
    by_item = dict(zip(np.asarray(candidates).tolist(), np.asarray(scores).tolist()))
    return np.asarray([by_item[int(i)] for i in slate], dtype=np.float64)


def logged_propensities(propensities) -> list[float]:
    """Propensities as the impression log stores them: at most 1 (epsilon/n + (1 - epsilon) may round a hair
    above)."""
    return [min(1.0, float(p)) for p in propensities]
