"""The ranker's final score: its own scores blended with two item-to-item terms, weights chosen on validation.

Why: on small catalogues with short histories (Amazon 5-core: ~150 items, ~7 events a user) plain item-to-item
evidence is strong and the attention ranker only partly learns it. On Magazine_Subscriptions (one seed, in
process, 2-core CPU) the fused ranker alone scored NDCG@10 0.213, item co-occurrence (item-kNN) alone 0.232,
ranker + co-occurrence 0.239, and ranker + co-occurrence + text similarity 0.257. The terms make different
mistakes, so they are added with weights picked on the validation users (a weight of 0 when a term does not
help, so a catalogue where it hurts keeps the ranker's own order).

Model, for user u with distinct history items H and candidate item j:

    ranker(u, j) = state_u . v_j                                   the sequential ranker
    cooc(u, j)   = sum_{i in H} sim[i, j]                          item-kNN on train co-occurrence, where
                   sim[i, j] = |users with i and j| / sqrt(|users with i| |users with j|), each row cut to its
                   `neighbours` largest values, own pair excluded
    text(u, j)   = p_u . t_j,  p_u = mean_{i in H} t_i             mean cosine to the history's texts (t: unit
                                                                   text vectors); only for a text-fused ranker
    score(u, j)  = z(ranker)[j] + beta * z(cooc)[j] + gamma * z(text)[j]

z() standardises one user's scores over the whole catalogue (mean 0, std 1), so the weights are unit-free. For a
retrieved subset of candidates the catalogue mean and std are exact without scoring every item: ranker and text
terms are linear in a user vector, so they follow from the mean and covariance of the item vectors; the
co-occurrence row is sparse, so its sums are cheap.

`sim` is a scipy CSR matrix with at most `neighbours` entries a row (1M items x 100: ~1.2 GB), built with one
sparse product of the user-item matrix.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from prefmine.metrics import ranking_metrics, top_k

SIM_FILE, BLEND_FILE = "cooccurrence.npz", "blend.json"


@dataclass(frozen=True)
class BlendConfig:
    """Blend settings (RankerConfig.blend / blend_neighbours select them in training)."""

    neighbours: int = 100  # co-occurrence similarities kept per item
    cooc_weights: tuple = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # beta, tried on validation
    text_weights: tuple = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)  # gamma, tried on validation (text-fused rankers)


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


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def text_profiles(unit_text: np.ndarray, histories) -> np.ndarray:
    """p_u: the mean unit text vector of each history's distinct items (zeros for an empty history)."""
    hm = history_matrix(histories, len(unit_text))
    counts = np.maximum(np.asarray(hm.sum(1)).ravel(), 1.0)
    return np.asarray(hm @ unit_text) / counts[:, None]


def zscore(s: np.ndarray, n: int | None = None) -> np.ndarray:
    """Rows standardised by their own mean and std (of their first `n` columns when given)."""
    ref = s if n is None else s[:, :n]
    return (s - ref.mean(1, keepdims=True)) / (ref.std(1, keepdims=True) + 1e-9)


def combine(ranker: np.ndarray, cooc: np.ndarray | None, text: np.ndarray | None, beta: float,
            gamma: float, n_stats: int | None = None) -> np.ndarray:
    """z(ranker) + beta z(cooc) + gamma z(text) over full catalogue rows (a zero weight skips its term); `n_stats`:
    standardise by the first n_stats columns (the trained catalogue, when items were appended)."""
    out = zscore(ranker, n_stats)
    if beta and cooc is not None:
        out += beta * zscore(cooc, n_stats)
    if gamma and text is not None:
        out += gamma * zscore(text, n_stats)
    return out


def choose_weights(states: np.ndarray, item_vectors: np.ndarray, sim: sp.csr_matrix, histories, targets,
                   cfg: BlendConfig, unit_text: np.ndarray | None = None,
                   chunk: int = 256) -> tuple[tuple[float, float], dict]:
    """The (beta, gamma) with the best validation NDCG@10 (ties: the smaller weights) and every pair's score.

    states [U, d] are the ranker's user states for `histories`, targets [U] their next items; gamma stays 0
    without `unit_text`. Users are scored `chunk` at a time, so a large catalogue never needs [U, n_items]."""
    betas = sorted(float(b) for b in set(cfg.cooc_weights) | {0.0})
    gammas = sorted(float(g) for g in set(cfg.text_weights) | {0.0}) if unit_text is not None else [0.0]
    pairs = list(itertools.product(betas, gammas))
    tops = {p: [] for p in pairs}
    for i in range(0, len(histories), chunk):
        hs = histories[i:i + chunk]
        exclude = [set(np.asarray(h).tolist()) for h in hs]
        r, c = states[i:i + chunk] @ item_vectors.T, cooc_scores(sim, hs)
        t = text_profiles(unit_text, hs) @ unit_text.T if unit_text is not None else None
        for b, g in pairs:
            tops[(b, g)].append(top_k(combine(r, c, t, b, g), 10, exclude))
    table = {p: float(ranking_metrics(np.concatenate(tops[p]), np.asarray(targets), (10,))["NDCG@10"])
             for p in pairs}
    best = max(table, key=lambda p: (table[p], -p[0] - p[1]))
    return best, table


class ScoreBlend:
    """A saved blend, applied to a ranker's scores at inference (`RankerRuntime`).

    Keeps the mean and covariance of the ranker's item vectors and of the unit text vectors, so that candidate
    subsets (`rescore`) are blended exactly as full rows are (`full`).
    """

    def __init__(self, sim: sp.csr_matrix | None, beta: float, item_vectors: np.ndarray,
                 unit_text: np.ndarray | None = None, gamma: float = 0.0):
        self.sim, self.beta = sim, float(beta)
        self.unit_text = unit_text if gamma else None
        self.gamma = float(gamma) if unit_text is not None else 0.0
        self.item_moments = _moments(item_vectors)
        self.n_stats: int | None = None  # standardise over the first n_stats items only (`extended`)
        self.text_moments = _moments(self.unit_text) if self.unit_text is not None else None

    @classmethod
    def load(cls, ranker_dir: Path, item_vectors: np.ndarray) -> ScoreBlend | None:
        """The blend saved beside a ranker, or None (older bundles, or zero weights chosen in training)."""
        d = Path(ranker_dir)
        if not (d / BLEND_FILE).is_file():
            return None
        meta = json.loads((d / BLEND_FILE).read_text())
        beta, gamma = float(meta.get("beta", 0.0)), float(meta.get("gamma", 0.0))
        sim = sp.load_npz(d / SIM_FILE).tocsr() if beta and (d / SIM_FILE).is_file() else None
        text = unit_rows(np.load(d / "text_embeddings.npy")) if gamma and (d / "text_embeddings.npy").is_file() \
            else None
        if sim is None and text is None:
            return None
        return cls(sim, beta if sim is not None else 0.0, item_vectors, text, gamma)

    def extended(self, n_new: int, unit_text: np.ndarray | None) -> ScoreBlend:
        """This blend over the catalogue with `n_new` items appended after training (`unit_text`: their unit text
        vectors): the new items have no co-occurrence (zero rows and columns) and their own text term, and every
        score is still standardised by the trained catalogue's statistics, so appending items moves no other
        item's score."""
        out = copy.copy(self)
        n0 = self.n_stats or (self.sim.shape[0] if self.sim is not None else len(self.unit_text))
        n = n0 + int(n_new)
        out.n_stats = n0
        if self.sim is not None:  # zero rows appended (the arrays shared, not copied), columns widened
            sim = self.sim
            indptr = np.concatenate([sim.indptr[:n0 + 1], np.full(n - n0, sim.indptr[n0], sim.indptr.dtype)])
            out.sim = sp.csr_matrix((sim.data, sim.indices, indptr), shape=(n, n), copy=False)
        if self.unit_text is not None:
            extra = np.zeros((n_new, self.unit_text.shape[1]), np.float32) if unit_text is None \
                else np.asarray(unit_text, np.float32)
            out.unit_text = np.concatenate([self.unit_text[:n0], extra])
        return out

    def _terms(self, histories):
        cooc = cooc_scores(self.sim, histories) if self.beta else None
        text = text_profiles(self.unit_text, histories) @ self.unit_text.T if self.gamma else None
        return cooc, text

    def full(self, ranker_scores: np.ndarray, histories) -> np.ndarray:
        return combine(ranker_scores, *self._terms(histories), self.beta, self.gamma, self.n_stats)

    def rescore(self, states: np.ndarray, cand_scores: np.ndarray, cands: np.ndarray, histories) -> np.ndarray:
        """Blended scores of candidate subsets [B, k] (ids -1 = padding, left at -inf)."""
        safe = np.where(cands >= 0, cands, 0)
        out = _standardise(cand_scores, states, self.item_moments)
        if self.beta:
            hm = history_matrix(histories, self.sim.shape[0]) @ self.sim  # sparse [B, n]
            n = self.n_stats or self.sim.shape[0]  # appended items' columns are zero: the sums are the same
            mean = np.asarray(hm.sum(1)).ravel() / n
            std = np.sqrt(np.maximum(np.asarray(hm.multiply(hm).sum(1)).ravel() / n - mean ** 2, 0.0)) + 1e-9
            c = np.asarray(hm[np.arange(len(cands))[:, None], safe].todense()) if len(cands) else cand_scores * 0
            out = out + self.beta * (c - mean[:, None]) / std[:, None]
        if self.gamma:
            p = text_profiles(self.unit_text, histories)
            t = np.einsum("bd,bkd->bk", p, self.unit_text[safe])
            out = out + self.gamma * _standardise(t, p, self.text_moments)
        return np.where(cands >= 0, out, -np.inf).astype(np.float32)


def _moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vectors, dtype=np.float64)
    cov = np.cov(v, rowvar=False, bias=True) if len(v) > 1 else np.zeros((v.shape[1],) * 2)
    return v.mean(0), cov


def _standardise(scores: np.ndarray, users: np.ndarray, moments) -> np.ndarray:
    """(scores - catalogue mean) / catalogue std for linear scores users @ vectors.T, from the vectors' moments."""
    u = np.asarray(users, dtype=np.float64)
    mean = u @ moments[0]
    std = np.sqrt(np.maximum(np.einsum("bd,de,be->b", u, moments[1], u), 0.0)) + 1e-9
    return (scores - mean[:, None]) / std[:, None]


def save_blend(ranker_dir: Path, sim: sp.csr_matrix, weights: tuple[float, float], table: dict,
               cfg: BlendConfig) -> dict:
    """Write the similarity matrix and the chosen weights beside a ranker; what was chosen, for the manifest."""
    d = Path(ranker_dir)
    sp.save_npz(d / SIM_FILE, sim)
    beta, gamma = (float(w) for w in weights)
    meta = {"beta": beta, "gamma": gamma, "config": asdict(cfg), "nnz": int(sim.nnz),
            "valid_NDCG@10": {f"beta={b},gamma={g}": round(v, 5) for (b, g), v in table.items()}}
    (d / BLEND_FILE).write_text(json.dumps(meta, indent=2))
    return {"beta": beta, "gamma": gamma, "valid_NDCG@10_ranker_alone": round(table[(0.0, 0.0)], 5),
            "valid_NDCG@10": round(table[(beta, gamma)], 5)}


def fit_blend(ranker_dir: Path, ds, cfg, text: np.ndarray | None, histories, times, targets,
              events=None) -> dict:
    """Choose the blend weights (ranker/blend.py) of a saved ranker on the validation users; save them beside it.
    The text-similarity term is only tried for a text-fused ranker (`text` given). `ds` is the Dataset (its
    train sequences give the co-occurrence), `cfg` the RankerConfig (its blend_neighbours); `times` and `events`
    the validation histories' event times and types (None: unknown gaps, `rate`)."""
    from prefmine.ranker.runtime import load_ranker, ranker_item_vectors  # runtime imports this module
    from prefmine.ranker.task import user_states

    blend_cfg = BlendConfig(neighbours=cfg.blend_neighbours)
    model = load_ranker(ranker_dir)
    states = user_states(model, histories, cfg.max_len, times, events=events)
    sim = item_similarity(ds.n_items, ds.train_seqs, blend_cfg.neighbours)
    weights, table = choose_weights(states, ranker_item_vectors(model), sim, histories, targets, blend_cfg,
                                    unit_rows(text) if text is not None else None)
    return save_blend(ranker_dir, sim, weights, table, blend_cfg)
