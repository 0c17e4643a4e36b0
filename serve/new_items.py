"""The serving wiring of new catalogue items (prefmine.serving.new_items): items written through WriteCatalog that
the served bundle does not hold, embedded and served without a new bundle.

Ingress (`LiveItems`): each request's poll of the change log (serve.live_catalog) hands the written items over;
when the log moved and no build is running, a background task (never awaited by a request) plans what changed,
embeds the texts through the encoder deployment (the bundle's own encoder, already loaded there, batched, rather
than a second copy of the model in every ingress replica), asks the ranker deployment for the fused ranker's
cold-item vectors of them, and puts the new snapshot in the object store once. Requests then take `view(served)`:
the served bundle with the new items appended (ids, titles, rule attributes, catalogue text) and a `BundleRef`
that carries the snapshot's digest and object reference (`ItemsRef`; BundleRef equality ignores it).

Deployments (`Extensions`): a call whose ref carries an `ItemsRef` is answered by the version's runtime extended
with that snapshot (built once per digest in a worker thread, the last few kept), so the ranker scores and
retrieves the new items like any item and the encoder's Search finds them. A request costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prefmine.serving.live_catalog import LiveCatalog, LiveCatalogConfig
from prefmine.serving.new_items import NewItems, apply, plan, prior_popularity, with_updates
from prefmine.serving.recommend import popularity_order, with_fresh_slots
from prefmine.serving.vectors import unit_rows

logger = logging.getLogger("ray.serve")

RETRY_S = 5.0  # after a failed build (encoder or ranker away), the next try waits this long


@dataclass(frozen=True)
class ItemsRef:
    """A NewItems snapshot in the object store (`obj`, owned by the ingress replica that built it) and its digest."""

    digest: str
    obj: Any


class LiveServed:
    """A ServedBundle with new items appended after its own (the rest is the bundle's: histories, pseudonyms; new
    items are in no stored history). New items count with a prior popularity (LiveCatalogConfig): the bundle
    items' shares and order among themselves do not change, and a cold start's slate holds
    `cold_start_new_slots` of the newest."""

    def __init__(self, base, new: NewItems, items_ref: ItemsRef | None, config: LiveCatalogConfig | None = None,
                 given: dict[str, dict] | None = None):
        from serve.profile import CatalogText

        config = config or LiveCatalogConfig()
        self.base, self.new = base, new
        self.slots = int(config.cold_start_new_slots)
        self.fresh = np.arange(new.n_items - 1, new.base_n - 1, -1, dtype=np.int64)  # newest (last written) first
        if len(new):
            prior = prior_popularity(base.pop_scores, config.new_item_popularity_quantile)
            total = float(np.sum(base.pop_scores))
            self.pop_scores = np.concatenate([base.pop_scores, np.full(len(new), prior)])
            self.pop_order = popularity_order(self.pop_scores)
            self.pop_share = np.concatenate([base.pop_share, np.full(len(new), prior / total if total > 0 else
                                                                     1.0 / new.n_items)])
        self.ref = replace(base.ref, items=items_ref) if items_ref is not None else base.ref
        self.digest = new.digest
        self.n_items = new.n_items
        self.item_ids = base.item_ids + list(new.ids)
        self.titles = base.titles + [str(f.get("title") or "") for f in new.fields]
        # the rules' attributes: the new items' appended, and upserted fields of the bundle's own items written over
        self.attributes = with_updates(new.attributes(base.attributes) if len(new) else base.attributes, given or {},
                                       base.bundle.item_index)
        self.catalog = base.catalog
        if len(new):
            self.catalog = copy.copy(base.catalog)
            one = CatalogText(new.frame())
            for name in ("titles", "brands", "categories", "title_words"):
                setattr(self.catalog, name, getattr(base.catalog, name) + getattr(one, name))

    def __getattr__(self, name):
        return getattr(self.base, name)

    def item_index(self, raw_id: str) -> int | None:
        i = self.base.bundle.item_index(raw_id)
        return i if i is not None else self.new.index(raw_id)

    def exclude_set(self, raw_ids) -> set[int]:
        return {int(i) for i in map(self.item_index, raw_ids) if i is not None}

    def popular(self, k: int, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """A cold start's slate: popularity with the newest new items in their slots (with_fresh_slots)."""
        if not len(self.new):
            return self.base.popular(k, exclude)
        items = with_fresh_slots(self.pop_order, self.pop_scores, k, exclude, self.fresh, self.slots)
        return items, self.pop_scores[items]


class LiveItems:
    """An ingress replica's new items for the served bundle version (see the module docstring)."""

    def __init__(self, ranker, encoder, call: Callable, config: LiveCatalogConfig):
        self.ranker, self.encoder, self.call, self.config = ranker, encoder, call, config
        self._ref = None
        self._current: NewItems | None = None
        self._items_ref: ItemsRef | None = None
        self._view: LiveServed | None = None
        self._view_at = -1  # the change log id the view's attributes reflect
        self._built_at = -1  # the change log id the current snapshot reflects
        self._retry_at = 0.0
        self._task: asyncio.Task | None = None
        self.last_build_s = 0.0

    def view(self, served, live: LiveCatalog) -> LiveServed:
        """The served bundle with the new items known now; starts a build in the background when the log moved."""
        if served.ref != self._ref:  # another bundle version: its own catalogue, nothing appended yet
            self._ref, self._current = served.ref, NewItems(int(served.bundle.n_items))
            self._items_ref, self._view, self._built_at = None, None, -1
        running = self._task is not None and not self._task.done()
        if not running and live.last_id != self._built_at and time.monotonic() >= self._retry_at:
            self._task = asyncio.get_running_loop().create_task(self._build(served, live.last_id, dict(live.written)))
        if self._view is None or self._view.base is not served or self._view_at != live.last_id:
            self._view = LiveServed(served, self._current, self._items_ref, self.config, live.given())
            self._view_at = live.last_id
        return self._view

    async def _build(self, served, at: int, written: dict) -> None:
        import ray

        t0 = time.perf_counter()
        try:
            current = self._current
            p = plan(current, written, served.bundle.item_index, self.config.max_new_items)
            if p.left_out:
                logger.warning("%d new catalogue items beyond max_new_items=%d wait for the next bundle",
                               p.left_out, self.config.max_new_items)
            if not p.same:
                texts = [p.rows[r][2] for r in p.embed]
                step = max(1, int(self.config.embed_batch))
                parts = [np.asarray(await self.call(self.encoder.embed, served.ref, texts[i:i + step]), np.float32)
                         for i in range(0, len(texts), step)]
                text_vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
                vectors = (np.asarray(await self.call(self.ranker.cold_vectors, served.ref, text_vectors))
                           if len(texts) else text_vectors)
                new = apply(current, p, text_vectors, vectors)
                if served.ref == self._ref and self._current is current:
                    self._current = new
                    self._items_ref = ItemsRef(new.digest, ray.put(new)) if len(new) else None
                    self._view = None
                    logger.info("serving %d new catalogue items (%d embedded)", len(new), len(texts))
            if served.ref == self._ref:
                self._built_at = at
            self.last_build_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - logged; the replica serves what it has and tries again later
            self._retry_at = time.monotonic() + RETRY_S
            logger.warning("new catalogue items not embedded (%s: %s); retrying in %.0f s", type(e).__name__, e,
                           RETRY_S)


class Extensions:
    """A deployment's runtimes extended with new-item snapshots, by (base runtime, digest); the last `keep` (each
    holds a copy of the version's item vectors with the new rows appended)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    async def get(self, base, ref, make: Callable[[Any, NewItems], Any]):
        """`base` as it serves `ref`: itself when the ref carries no new items, else make(base, snapshot)."""
        items = getattr(ref, "items", None)
        if items is None:
            return base
        key = (id(base), items.digest)
        got = self._items.get(key)
        if got is None:
            new = await items.obj
            got = await asyncio.to_thread(make, base, new)
            self._items[key] = got
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return got


def digest_of(ref) -> str:
    """The new-items digest a ref carries ("" for none): calls batched together must share it."""
    items = getattr(ref, "items", None)
    return items.digest if items is not None else ""


def extended_policy(version, new: NewItems):
    """A slate policy version that can read the new items: a learned policy's per-item features (popularity,
    unit ranker vectors) extended with theirs (no popularity); heuristics and greedy need nothing."""
    if getattr(version, "runtime", None) is None or not len(new):
        return version
    out, rt = copy.copy(version), copy.copy(version.runtime)
    rt._log_pop = np.concatenate([rt._log_pop, np.zeros(len(new))])
    rt._unit = np.concatenate([rt._unit, unit_rows(new.vectors)])
    out.runtime = rt
    return out
