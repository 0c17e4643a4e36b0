"""Non-neural baselines printed beside every model: popularity and item-kNN.

Popularity scores each item by its train count. Item-kNN scores item j for a user by the sum of cosine
similarities between j and the user's history items, using the train user-item matrix (binary), keeping each
item's `neighbours` most similar items.
"""

from __future__ import annotations

import numpy as np

from prefmine.ranker.blend import cooc_scores, item_similarity


class Popularity:
    name = "popularity"

    def __init__(self, n_items: int, train_seqs):
        self.counts = np.zeros(n_items)
        for seq in train_seqs:
            np.add.at(self.counts, seq, 1.0)

    def scores(self, histories) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN:
    """Item-kNN on the sparse co-occurrence similarity the ranker's blend uses (`ranker/blend.py`)."""

    name = "item_knn"

    def __init__(self, n_items: int, train_seqs, neighbours: int = 100, shrink: float = 0.0):
        self.sim = item_similarity(n_items, train_seqs, neighbours, shrink)

    def scores(self, histories) -> np.ndarray:
        return cooc_scores(self.sim, histories)
