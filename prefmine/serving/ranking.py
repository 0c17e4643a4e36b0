"""The ranker's serving answers from a bundle version's ``RankerRuntime`` (prefmine.ranker.runtime) or its arrays:
candidates per user, scores and next-item probabilities of given items, similar items, the user's preference
summary and, for explanations, the history item behind each recommendation."""

from __future__ import annotations

from typing import Any

import numpy as np

from prefmine.serving.history import ranker_inputs
from prefmine.serving.vectors import top_by_similarity


def cut_candidates(idx, scores, states, ns: list[int]) -> list[dict]:
    """Per user, the first n of a batched top-max(ns) answer, without padding (index < 0) or non-finite scores:
    ``idx`` (int64), ``scores`` (float32) and the user ``state`` (float32)."""
    out = []
    for row, n in enumerate(ns):
        i, s = np.asarray(idx[row][:n], dtype=np.int64), np.asarray(scores[row][:n], dtype=np.float32)
        keep = np.isfinite(s) & (i >= 0)
        out.append({"idx": i[keep], "scores": s[keep], "state": np.asarray(states[row], dtype=np.float32)})
    return out


def candidates_for(runtime, histories: list, ns: list[int], excludes: list[set[int]]) -> list[dict]:
    """The ranker's candidates for several users at once: the top max(ns), each row cut to its own n (the top-k
    order does not depend on k, ties going to the lower index, so a row's answer does not depend on its batch).
    ``histories``: prefmine.serving.history.History (items with their event types and times: the ranker's
    inputs as in training), or item arrays (read as `rate` events at unknown times)."""
    inputs = ranker_inputs(histories)
    idx, scores, states = runtime.top_n_with_states(inputs["histories"], max(ns), excludes, inputs["times"],
                                                    inputs["events"])
    return cut_candidates(idx, scores, states, ns)


def item_scores(scores: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """Relevance of given items from one user's scores over the whole catalogue, and the probability that the
    next interaction is each of them (softmax over the catalogue: what the ranker's cross-entropy trains)."""
    scores = np.asarray(scores, dtype=np.float64)
    logz = scores.max() + np.log(np.exp(scores - scores.max()).sum())
    items = np.asarray(items, dtype=np.int64)
    return {"scores": scores[items].astype(np.float32), "probs": np.exp(scores[items] - logz)}


def similar_items(unit_vectors: np.ndarray, item: int, k: int) -> dict[str, np.ndarray]:
    """The k items whose (unit) vectors are closest in cosine to one item's, the item itself left out."""
    sims = unit_vectors @ unit_vectors[int(item)]
    sims[int(item)] = -np.inf
    return top_by_similarity(sims, min(int(k), len(sims) - 1))


def preference(state: np.ndarray, item_vectors: np.ndarray, top: int = 5) -> dict[str, Any]:
    """A user state summarised: its dim, its L2 norm and the ``top`` items it scores highest (ties to the lower
    index)."""
    scores = state @ item_vectors.T
    top_idx = np.argsort(-scores, kind="stable")[:top]
    return {"dim": int(state.shape[0]), "norm": float(np.linalg.norm(state)), "top": top_idx.astype(np.int64)}


def nearest_sources(item_vectors: np.ndarray, history: np.ndarray, items: np.ndarray) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """For each item, the history item with the most similar vector (cosine) and that similarity: why it was
    recommended (Recommend's explain)."""
    v = item_vectors / np.maximum(np.linalg.norm(item_vectors, axis=1, keepdims=True), 1e-12)
    hist = np.unique(np.asarray(history, dtype=np.int64))
    sims = v[np.asarray(items, dtype=np.int64)] @ v[hist].T
    best = sims.argmax(1)
    return hist[best], sims[np.arange(len(items)), best]
