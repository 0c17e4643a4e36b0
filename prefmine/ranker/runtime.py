"""Ranker at inference time: user states, full-catalogue scores and top-N candidates (no Ray)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from prefmine.metrics import top_k
from prefmine.ranker.model import FusedRanker, RankerConfig
from prefmine.ranker.task import user_states


def load_ranker(d: Path) -> FusedRanker:
    meta = json.loads((d / "ranker_config.json").read_text())
    known = {f.name for f in fields(RankerConfig)}
    cfg = RankerConfig(**{k: v for k, v in meta["config"].items() if k in known})
    text = np.load(d / "text_embeddings.npy") if (d / "text_embeddings.npy").exists() else None
    model = FusedRanker(cfg, int(meta["n_items"]), text)
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


class RankerRuntime:
    def __init__(self, bundle_path: str | Path, component: str = "ranker"):
        d = Path(bundle_path) / component
        if not (d / "model.pt").is_file():
            raise FileNotFoundError(f"{d} holds no ranker (model.pt missing)")
        torch.set_num_threads(1)
        self.model = load_ranker(d)
        self.max_len = self.model.cfg.max_len
        with torch.no_grad():
            self.item_vectors = self.model.item_vectors().float().numpy()
        pop_path = Path(bundle_path) / "catalog" / "popularity.npy"
        self.popularity = np.load(pop_path) if pop_path.exists() else np.zeros(len(self.item_vectors))

    @property
    def dim(self) -> int:
        return self.item_vectors.shape[1]

    def user_states(self, histories, times=None) -> np.ndarray:
        """`times`: event times in seconds aligned with each history (time-gap features); None: unknown."""
        return user_states(self.model, [np.asarray(h, dtype=np.int64) for h in histories], self.max_len, times)

    def scores(self, histories, times=None) -> np.ndarray:
        return self.user_states(histories, times) @ self.item_vectors.T

    def top_n(self, histories, n: int, exclude=None):
        """Top-n items and scores per history; an empty history is ranked by popularity (cold start)."""
        idx, scores, _ = self.top_n_with_states(histories, n, exclude)
        return idx, scores

    def top_n_with_states(self, histories, n: int, exclude=None):
        """(top-n items, their scores, user states): one forward pass for ranker and policy."""
        states = self.user_states(histories)
        scores = states @ self.item_vectors.T
        for i, h in enumerate(histories):
            if len(h) == 0:
                scores[i] = np.log1p(self.popularity)
        idx = top_k(scores, n, exclude)
        return idx, np.take_along_axis(scores, idx, 1), states
