"""Ranker at inference time: user states, full-catalogue scores and top-N candidates (no Ray).

Top-N candidates come from `prefmine.ranker.retrieval`: below `RetrievalConfig.exact_below` items (50k) the
runtime scores the whole catalogue (`states @ item_vectors.T` + `prefmine.metrics.top_k`, exact); from there it
searches an approximate index (IVF by default) that the ranker job saved beside the model
(`<bundle>/ranker/item_index.{faiss,json}`), or builds one at load when the bundle has none (older bundles).
`scores` always covers the full catalogue (evaluation ranks over all items).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from prefmine.metrics import top_k
from prefmine.ranker.blend import ScoreBlend
from prefmine.ranker.model import FusedRanker, RankerConfig
from prefmine.ranker.retrieval import RetrievalConfig, open_item_index
from prefmine.ranker.task import user_states

logger = logging.getLogger(__name__)


def save_ranker(d: Path, weights: Path, cfg: RankerConfig, n_items: int, text: np.ndarray | None = None) -> Path:
    """Write a ranker dir that `load_ranker` reads: model.pt (a copy of the state dict file `weights`),
    ranker_config.json (config and catalogue size) and, for a text-fused ranker, the frozen text embeddings it
    was trained with (text_embeddings.npy)."""
    from prefmine import config as C

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, d / "model.pt")
    if text is not None:
        np.save(d / "text_embeddings.npy", text.astype(np.float32))
    (d / "ranker_config.json").write_text(json.dumps({"config": C.to_dict(cfg), "n_items": n_items}, indent=2))
    return d


def load_ranker(d: Path) -> FusedRanker:
    """The ranker `save_ranker` wrote, in eval mode."""
    meta = json.loads((d / "ranker_config.json").read_text())
    known = {f.name for f in fields(RankerConfig)}
    cfg = RankerConfig(**{k: v for k, v in meta["config"].items() if k in known})
    text = np.load(d / "text_embeddings.npy") if (d / "text_embeddings.npy").exists() else None
    model = FusedRanker(cfg, int(meta["n_items"]), text)
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def ranker_item_vectors(model: FusedRanker) -> np.ndarray:
    with torch.no_grad():
        return model.item_vectors().float().numpy()


class RankerRuntime:
    """`retrieval`: how top-N candidates are found (None: as saved with the bundle's index, else the defaults).
    `blend`: add the co-occurrence and text-similarity terms saved with the ranker (`ranker/blend.py`), if any."""

    def __init__(self, bundle_path: str | Path, component: str = "ranker", retrieval: RetrievalConfig | None = None,
                 blend: bool = True):
        d = Path(bundle_path) / component
        if not (d / "model.pt").is_file():
            raise FileNotFoundError(f"{d} holds no ranker (model.pt missing)")
        torch.set_num_threads(1)
        self.model = load_ranker(d)
        self.max_len = self.model.cfg.max_len
        self.item_vectors = ranker_item_vectors(self.model)
        pop_path = Path(bundle_path) / "catalog" / "popularity.npy"
        self.popularity = np.load(pop_path) if pop_path.exists() else np.zeros(len(self.item_vectors))
        # None: exact (the full matmul below); else an approximate ItemIndex over item_vectors
        self.index = open_item_index(d, self.item_vectors, retrieval, log=logger.warning)
        self.blend = ScoreBlend.load(d, self.item_vectors) if blend else None

    @property
    def dim(self) -> int:
        return self.item_vectors.shape[1]

    def cold_vectors(self, text: np.ndarray) -> np.ndarray:
        """Ranker vectors of items the bundle was not trained on, from their text embeddings (the model's cold
        item path, FusedRanker.cold_item_vectors) [m, dim]."""
        with torch.no_grad():
            return self.model.cold_item_vectors(np.asarray(text, np.float32)).float().numpy()

    def extended(self, vectors: np.ndarray, unit_text: np.ndarray | None = None) -> RankerRuntime:
        """A runtime over this catalogue plus items appended after training (their ranker vectors `vectors` and
        unit text vectors): they are scored, retrieved and blended like every item (no popularity, no
        co-occurrence), and the other items' scores do not change (ScoreBlend.extended). Shares the model and the
        approximate index, if any (AppendedIndex)."""
        out = object.__new__(RankerRuntime)
        out.__dict__.update(self.__dict__)
        out.item_vectors = np.concatenate([self.item_vectors, np.asarray(vectors, np.float32)])
        out.popularity = np.concatenate([self.popularity, np.zeros(len(vectors))])
        if self.index is not None:  # the index keeps its own items; the appended ones are scored exactly beside it
            out.index = AppendedIndex(self.index, np.asarray(vectors, np.float32), len(self.item_vectors))
        if self.blend is not None:
            out.blend = self.blend.extended(len(vectors), unit_text)
        return out

    def user_states(self, histories, times=None, events=None) -> np.ndarray:
        """`times`: event times in seconds aligned with each history (time-gap features; NaN or None: unknown);
        `events`: event types (prefmine.data.dataset.EVENTS indices) aligned with each history (None: `rate`)."""
        return user_states(self.model, [np.asarray(h, dtype=np.int64) for h in histories], self.max_len, times,
                           events=events)

    def scores(self, histories, times=None, events=None) -> np.ndarray:
        """Scores of every item [len(histories), n_items]; blended (ranker/blend.py) when the ranker has a blend."""
        scores = self.user_states(histories, times, events) @ self.item_vectors.T
        return self.blend.full(scores, histories) if self.blend is not None else scores

    def top_n(self, histories, n: int, exclude=None, times=None, events=None):
        """Top-n items and scores per history; an empty history is ranked by popularity (cold start)."""
        idx, scores, _ = self.top_n_with_states(histories, n, exclude, times, events)
        return idx, scores

    def top_n_with_states(self, histories, n: int, exclude=None, times=None, events=None):
        """(top-n items, their scores, user states): one forward pass for ranker and policy."""
        states = self.user_states(histories, times, events)
        if self.index is None:
            scores = states @ self.item_vectors.T
            if self.blend is not None:
                scores = self.blend.full(scores, histories)
            for i, h in enumerate(histories):
                if len(h) == 0:
                    scores[i] = np.log1p(self.popularity)
            idx = top_k(scores, n, exclude)
            return idx, np.take_along_axis(scores, idx, 1), states
        if self.blend is None:
            return (*self._top_n_indexed(histories, states, n, exclude), states)
        # the index retrieves by ranker score alone: take twice as many, blend them in exactly, keep the best n
        idx, scores = self._top_n_indexed(histories, states, min(2 * int(n), len(self.item_vectors)), exclude)
        warm = np.flatnonzero([len(h) > 0 for h in histories])
        if len(warm):
            scores[warm] = self.blend.rescore(states[warm], scores[warm], idx[warm], [histories[i] for i in warm])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1), states

    def _top_n_indexed(self, histories, states: np.ndarray, n: int, exclude):
        """Top-n from the approximate index; empty histories by popularity. Rows with fewer than n items left
        outside their exclude set are padded with id -1 and score -inf."""
        k = min(int(n), len(self.item_vectors))
        idx = np.full((len(histories), k), -1, dtype=np.int64)
        scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        cold = np.array([len(h) == 0 for h in histories], dtype=bool)
        rows_of = (lambda rows: [exclude[i] for i in rows]) if exclude is not None else (lambda rows: None)
        warm = np.flatnonzero(~cold)
        if len(warm):
            idx[warm], scores[warm] = self.index.search(states[warm], k, rows_of(warm))
        pop = np.log1p(self.popularity)[None, :] if cold.any() else None
        for i in np.flatnonzero(cold):
            ex = rows_of([i])
            row = top_k(pop, k, ex)[0]
            ok = np.ones(k, dtype=bool) if ex is None or ex[0] is None else ~np.isin(row, list(ex[0]))
            idx[i, ok], scores[i, ok] = row[ok], pop[0, row[ok]]
        return idx, scores


class AppendedIndex:
    """A trained catalogue's approximate item index with items appended after it (a runtime's `extended`): the
    index searches its own items, the appended ones (few: new catalogue items) are scored exactly, and the two
    answers are merged, so no index is rebuilt when an item is added. Same `search` contract as ItemIndex."""

    def __init__(self, index, vectors: np.ndarray, base_n: int):
        self.index, self.vectors, self.base_n = index, vectors, int(base_n)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        ids, scores = self.index.search(q, min(int(k), self.base_n), exclude)
        new_ids = np.broadcast_to(self.base_n + np.arange(len(self.vectors)), (len(q), len(self.vectors)))
        new_scores = (q @ self.vectors.T).astype(np.float32)
        for row, ex in enumerate(exclude or ()):
            if ex:
                new_scores[row, np.isin(new_ids[row], list(ex))] = -np.inf
        new_ids = np.where(np.isfinite(new_scores), new_ids, -1)
        ids, scores = np.concatenate([ids, new_ids], 1), np.concatenate([scores, new_scores], 1)
        order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=1)[:, :int(k)]
        return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
