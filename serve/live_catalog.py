"""The ingress's wiring of the live catalogue (prefmine.serving.live_catalog): the replica's poller of the feedback
store's catalogue change log, and the helpers that keep retired and unavailable items out of every answer before
the top k (Recommend's exclusions, Search's and SimilarItems' masks)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from prefmine.serving.live_catalog import LiveCatalog

logger = logging.getLogger("ray.serve")


async def poll(live: LiveCatalog) -> None:
    """Read the change log when due (in a worker thread, under the store's lock). A failed poll keeps the last
    state and is logged."""
    if live.due():
        err = await asyncio.to_thread(live.refresh)
        if err is not None:
            logger.warning("catalogue change log not read (%s: %s); serving the last known catalogue",
                           type(err).__name__, err)


async def blocked_items(live: LiveCatalog, s) -> frozenset[int]:
    """The served item indexes that must not be shown now (`s`: a ServedBundle, or serve.new_items.LiveServed
    with the new items appended); polls the change log when due."""
    await poll(live)
    item_index = getattr(s, "item_index", None) or s.bundle.item_index
    return live.blocked_indices((s.ref, getattr(s, "digest", "")), item_index)


def without(mask: np.ndarray | None, blocked: frozenset[int], n_items: int) -> np.ndarray | None:
    """An allowed-items mask with the blocked items off (None, everything allowed, when nothing is blocked)."""
    if not blocked:
        return mask
    out = np.ones(n_items, dtype=bool) if mask is None else np.array(mask, dtype=bool, copy=True)
    out[np.fromiter(blocked, dtype=np.int64, count=len(blocked))] = False
    return out


def drop_blocked(idx, sims, blocked: frozenset[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of (idx, sims) that are not blocked."""
    idx, sims = np.asarray(idx, np.int64), np.asarray(sims, np.float64)
    if blocked:
        keep = ~np.isin(idx, np.fromiter(blocked, dtype=np.int64, count=len(blocked)))
        idx, sims = idx[keep], sims[keep]
    return idx[:k], sims[:k]
