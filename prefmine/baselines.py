"""Non-neural baselines printed beside every model: popularity and item-kNN.

Popularity scores each item by its train count. Item-kNN scores item j for a user by the sum of cosine
similarities between j and the user's history items, using the train user-item matrix (binary), keeping each
item's `neighbours` most similar items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class Popularity:
    name = "popularity"

    def __init__(self, n_items: int, train_seqs):
        self.counts = np.zeros(n_items)
        for seq in train_seqs:
            np.add.at(self.counts, seq, 1.0)

    def scores(self, histories) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN:
    name = "item_knn"

    def __init__(self, n_items: int, train_seqs, neighbours: int = 100, shrink: float = 0.0):
        rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(train_seqs)]) if train_seqs else []
        cols = np.concatenate(train_seqs) if train_seqs else []
        m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(train_seqs), n_items))
        m.data[:] = 1.0
        m.sum_duplicates()
        m.data[:] = 1.0
        co = (m.T @ m).toarray()
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        if neighbours < n_items:
            cut = np.partition(sim, n_items - neighbours, axis=1)[:, n_items - neighbours][:, None]
            sim = np.where(sim >= cut, sim, 0.0)
        self.sim = sim.astype(np.float32)

    def scores(self, histories) -> np.ndarray:
        out = np.zeros((len(histories), self.sim.shape[0]), dtype=np.float32)
        for i, h in enumerate(histories):
            if len(h):
                out[i] = self.sim[np.unique(h)].sum(0)
        return out
