"""Item co-occurrence scores and their blend with the sequential ranker's scores.

Why: on small catalogues with short histories (Amazon 5-core: ~150 items, ~7 events a user) plain item-to-item
co-occurrence is a strong signal the attention ranker only partly learns: on Magazine_Subscriptions our item-kNN
scores NDCG@10 0.232 against the ranker's 0.213 (one seed, 2-core CPU). The two make different mistakes, so the
ranker keeps a co-occurrence term beside its own scores, weighted by a blend factor chosen on validation
(0 when it does not help, so a catalogue where it hurts is left as it was).

Model:
    sim[i, j]   = |users with i and j| / sqrt(|users with i| * |users with j|)   (train interactions only,
                  binary, own pair excluded), then only each row's `neighbours` largest values are kept
    cooc(u, j)  = sum over the distinct items i in u's history of sim[i, j]        (item-kNN)
    score(u, j) = z(ranker(u, .))[j] + beta * z(cooc(u, .))[j]

z() standardises a user's scores over the whole catalogue (mean 0, std 1), so beta is unit-free. For a
retrieved subset of candidates the catalogue mean and std are computed exactly without scoring every item:
the ranker's from the mean and covariance of the item vectors, the co-occurrence's from its sparse row.

`sim` is a scipy CSR matrix with at most `neighbours` entries a row (1M items x 100: ~1.2 GB); it is built
with one sparse product of the user-item matrix, so its cost grows with the co-occurring pairs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from prefmine.metrics import ranking_metrics, top_k

SIM_FILE, BLEND_FILE = "cooccurrence.npz", "blend.json"


@dataclass(frozen=True)
class BlendConfig:
    """Co-occurrence blend settings (RankerConfig.cooc_* select them in training)."""

    neighbours: int = 100  # similarities kept per item
    betas: tuple = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # weights tried on validation


def item_similarity(n_items: int, train_seqs, neighbours: int = 100, shrink: float = 0.0) -> sp.csr_matrix:
    """Cosine item-item co-occurrence over users' train sets, each row cut to its `neighbours` largest values
    (ties at the cut are kept), diagonal zero; float32 CSR [n_items, n_items]."""
    seqs = [np.unique(np.asarray(s, dtype=np.int64)) for s in train_seqs]
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(seqs)]) if seqs else np.zeros(0, np.int64)
    cols = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float64), (rows, cols)), shape=(len(seqs), n_items))
    co = (m.T @ m).tocsr()
    counts = co.diagonal()
    co.setdiag(0.0)
    co.eliminate_zeros()
    co = co.tocoo()
    vals = co.data / (np.sqrt(counts[co.row] * counts[co.col]) + shrink + 1e-12)
    sim = sp.csr_matrix((vals, (co.row, co.col)), shape=(n_items, n_items))
    sim.sort_indices()
    if neighbours < n_items:
        keep = np.ones(sim.nnz, dtype=bool)
        for i in np.flatnonzero(np.diff(sim.indptr) > neighbours):
            a, b = sim.indptr[i], sim.indptr[i + 1]
            row = sim.data[a:b]
            cut = np.partition(row, len(row) - neighbours)[len(row) - neighbours]
            keep[a:b] = row >= cut
        row_of = np.repeat(np.arange(n_items), np.diff(sim.indptr))
        indptr = np.r_[0, np.cumsum(np.bincount(row_of[keep], minlength=n_items))]
        sim = sp.csr_matrix((sim.data[keep], sim.indices[keep], indptr), shape=(n_items, n_items))
    return sim.astype(np.float32)


def history_matrix(histories, n_items: int) -> sp.csr_matrix:
    """Binary [len(histories), n_items] matrix of the distinct items in each history."""
    hs = [np.unique(np.asarray(h, dtype=np.int64)) for h in histories]
    indptr = np.r_[0, np.cumsum([len(h) for h in hs])]
    idx = np.concatenate(hs) if hs else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(hs), n_items))


def cooc_scores(sim: sp.csr_matrix, histories) -> np.ndarray:
    """Item-kNN scores [len(histories), n_items]: summed similarity rows of each history's distinct items."""
    return np.asarray((history_matrix(histories, sim.shape[0]) @ sim).todense(), dtype=np.float32)


def zscore(s: np.ndarray) -> np.ndarray:
    return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-9)


def blend(ranker: np.ndarray, cooc: np.ndarray, beta: float) -> np.ndarray:
    """z(ranker) + beta * z(cooc) over full catalogue rows."""
    return zscore(ranker) if beta == 0 else zscore(ranker) + beta * zscore(cooc)


def choose_beta(states: np.ndarray, item_vectors: np.ndarray, sim: sp.csr_matrix, histories, targets, betas,
                chunk: int = 256) -> tuple[float, dict]:
    """The blend weight with the best validation NDCG@10 (ties: the smaller weight) and every weight's score.

    states [U, d] are the ranker's user states for `histories`, targets [U] their next items; users are scored
    `chunk` at a time so a large catalogue never needs a [U, n_items] matrix."""
    betas = sorted(float(b) for b in set(betas) | {0.0})
    tops = {b: [] for b in betas}
    for i in range(0, len(histories), chunk):
        hs = histories[i:i + chunk]
        exclude = [set(np.asarray(h).tolist()) for h in hs]
        r, c = states[i:i + chunk] @ item_vectors.T, cooc_scores(sim, hs)
        for b in betas:
            tops[b].append(top_k(blend(r, c, b), 10, exclude))
    table = {b: float(ranking_metrics(np.concatenate(tops[b]), np.asarray(targets), (10,))["NDCG@10"])
             for b in betas}
    best = max(table, key=lambda b: (table[b], -b))
    return best, table


class CooccurrenceBlend:
    """A saved blend: the similarity matrix and its weight, applied to a ranker's scores at inference.

    `item_mean`/`item_cov` (mean and covariance of the ranker's item vectors) give each user's catalogue mean
    and std of ranker scores for candidate subsets (`rescore`), so retrieved candidates are blended exactly as
    full rows are.
    """

    def __init__(self, sim: sp.csr_matrix, beta: float, item_vectors: np.ndarray):
        self.sim, self.beta = sim, float(beta)
        v = np.asarray(item_vectors, dtype=np.float64)
        self.item_mean = v.mean(0)
        self.item_cov = np.cov(v, rowvar=False, bias=True) if len(v) > 1 else np.zeros((v.shape[1],) * 2)

    @classmethod
    def load(cls, ranker_dir: Path, item_vectors: np.ndarray) -> CooccurrenceBlend | None:
        """The blend saved beside a ranker, or None (older bundles, or beta 0 chosen in training)."""
        d = Path(ranker_dir)
        if not (d / BLEND_FILE).is_file():
            return None
        meta = json.loads((d / BLEND_FILE).read_text())
        if float(meta["beta"]) == 0 or not (d / SIM_FILE).is_file():
            return None
        return cls(sp.load_npz(d / SIM_FILE).tocsr(), meta["beta"], item_vectors)

    def full(self, ranker_scores: np.ndarray, histories) -> np.ndarray:
        return blend(ranker_scores, cooc_scores(self.sim, histories), self.beta)

    def rescore(self, states: np.ndarray, cand_scores: np.ndarray, cands: np.ndarray, histories) -> np.ndarray:
        """Blended scores of candidate subsets [B, k] (ids -1 = padding, left at -inf)."""
        n = self.sim.shape[0]
        s = np.asarray(states, dtype=np.float64)
        r_mean = s @ self.item_mean
        r_std = np.sqrt(np.maximum(np.einsum("bd,de,be->b", s, self.item_cov, s), 0.0)) + 1e-9
        hm = history_matrix(histories, n) @ self.sim  # sparse [B, n]
        c_sum = np.asarray(hm.sum(1)).ravel()
        c_sq = np.asarray(hm.multiply(hm).sum(1)).ravel()
        c_mean = c_sum / n
        c_std = np.sqrt(np.maximum(c_sq / n - c_mean ** 2, 0.0)) + 1e-9
        safe = np.where(cands >= 0, cands, 0)
        c = np.asarray(hm[np.arange(len(cands))[:, None], safe].todense()) if len(cands) else np.zeros_like(cand_scores)
        out = (cand_scores - r_mean[:, None]) / r_std[:, None] + self.beta * (c - c_mean[:, None]) / c_std[:, None]
        return np.where(cands >= 0, out, -np.inf).astype(np.float32)


def save_blend(ranker_dir: Path, sim: sp.csr_matrix, beta: float, table: dict, cfg: BlendConfig) -> dict:
    """Write the similarity matrix and the chosen weight beside a ranker; what was chosen, for the manifest."""
    d = Path(ranker_dir)
    sp.save_npz(d / SIM_FILE, sim)
    meta = {"beta": float(beta), "valid_NDCG@10_by_beta": {str(k): round(v, 5) for k, v in table.items()},
            "config": asdict(cfg), "nnz": int(sim.nnz)}
    (d / BLEND_FILE).write_text(json.dumps(meta, indent=2))
    return {"beta": meta["beta"], "valid_NDCG@10_unblended": round(table.get(0.0, float("nan")), 5),
            "valid_NDCG@10": round(table[float(beta)], 5)}
