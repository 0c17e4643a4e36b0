"""Recommend's warm path as library functions: how many candidates the ranker is asked for, and the served slate
of a user from a ranker runtime and a slate policy, computed with the functions the ranker deployment calls
(``ranking.candidates_for``, then ``PolicyVersion.select``). ``prefmine evaluate``'s ``served`` row scores these
slates, so what is evaluated is what the service answers.

A history here is a prefmine.serving.history.History: items with their event types and times. Users without
history (cold start, answered from popularity by the ingress) are not this path's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefmine.serving.history import as_history
from prefmine.serving.ranking import candidates_for

DEFAULT_CANDIDATES = 100  # ranker candidates the policy chooses a Recommend slate from


def candidate_count(k: int, n_candidates: int, n_items: int, n_excluded: int) -> int:
    """Candidates asked of the ranker for a slate of k: at least k, at least ``n_candidates``, at most what the
    catalogue holds outside the excluded items (<= 0: nothing is left to recommend)."""
    return min(max(int(k), int(n_candidates)), int(n_items) - int(n_excluded))


def recommend_slates(runtime, policy, histories: Sequence, k: int, n_candidates: int = DEFAULT_CANDIDATES,
                     excludes: Sequence[set[int]] | None = None, batch: int = 1) -> list[np.ndarray]:
    """The slate (item indices, in served order) Recommend answers for each history: the history's own items and
    ``excludes`` (the request's exclude_item_ids) left out, ``candidate_count`` candidates from the ranker, the
    policy's ordered choice of k among them. ``batch``: histories per ranker call; 1 is a lone request (the
    ranker's answer does not depend on its batch up to float rounding, which can swap near-equal scores)."""
    hs = [as_history(h) for h in histories]
    if any(len(h) == 0 for h in hs):
        raise ValueError("recommend_slates: every history needs at least one event (cold start is popularity)")
    if batch < 1:
        raise ValueError(f"recommend_slates: batch must be >= 1, got {batch}")
    n_items = len(runtime.item_vectors)
    ex = [set(excludes[j]) if excludes is not None else set() for j in range(len(hs))]
    for h, e in zip(hs, ex):
        e.update(int(i) for i in h.items)
    ns = [candidate_count(k, n_candidates, n_items, len(e)) for e in ex]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(hs)
    live = [j for j, n in enumerate(ns) if n > 0]
    for start in range(0, len(live), batch):
        rows = live[start:start + batch]
        cands = candidates_for(runtime, [hs[j] for j in rows], [ns[j] for j in rows], [ex[j] for j in rows])
        for j, cand in zip(rows, cands):
            slate, _ = policy.select(cand["state"], cand["idx"], cand["scores"], k, return_propensities=True)
            out[j] = np.asarray(slate, dtype=np.int64)  # called as RankerDeployment._select calls it
    return out


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item indices by descending popularity, ties to the lower index (computed once per bundle version)."""
    return np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")


def first_outside(order: np.ndarray, k: int, exclude: set[int]) -> np.ndarray:
    """The first k of ``order`` outside ``exclude``: a cold start's answer from ``popularity_order``."""
    if exclude:
        order = order[~np.isin(order, np.fromiter(exclude, dtype=np.int64))]
    return order[:k]


def with_fresh_slots(order: np.ndarray, popularity: np.ndarray, k: int, exclude: set[int], fresh: np.ndarray,
                     slots: int) -> np.ndarray:
    """A cold start's answer with new items in it: up to ``slots`` of ``fresh`` (new items, newest first) outside
    ``exclude``, the rest of the k from ``order`` (popularity) outside both, the slate in order of ``popularity``
    (new items carry their prior; ties keep the popular items first), so its scores never increase down the list."""
    fresh = [int(i) for i in np.asarray(fresh, dtype=np.int64).tolist() if int(i) not in exclude]
    fresh = fresh[:max(0, min(int(slots), int(k)))]
    head = first_outside(order, int(k) - len(fresh), exclude | set(fresh))
    slate = np.concatenate([head, np.asarray(fresh, dtype=np.int64)])
    return slate[np.argsort(-np.asarray(popularity, dtype=np.float64)[slate], kind="stable")]


def popular_items(popularity: np.ndarray, k: int, exclude: set[int]) -> np.ndarray:
    """A cold start's answer: the k most popular items outside ``exclude`` (ties to the lower index)."""
    return first_outside(popularity_order(popularity), k, exclude)
