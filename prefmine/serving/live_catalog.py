"""What a serving replica knows of the live catalogue: the feedback store's catalogue change log, polled by
increasing id at most every `interval_s`, folded into the ids that must not be shown (retired, or upserted with
available=false) and the ids written since the bundle was built.

Every replica (ingress replicas in several processes or nodes) polls the same log, so all of them converge on
the same catalogue within one interval of a write. `blocked_indices(bundle key, item_index)` maps the blocked
ids to one bundle's item indexes, cached until the log changes, so a request pays a set lookup, not a scan.
A store that fails to answer keeps the last state (an item is never un-retired by a read error); the error is
returned by `refresh` for the caller to log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prefmine.catalog.state import CatalogState


@dataclass
class LiveCatalogConfig:
    """interval_s: how often a replica polls the change log (the upper bound, with the write's commit, on how
    long a retired item can still be shown); page: changes read per query; max_new_items: items the bundle
    does not hold that a replica embeds and serves (prefmine.serving.new_items; later ones wait for the next
    bundle), which bounds its memory; embed_batch: texts per encoder call when it embeds them.

    New items have no interactions, so no popularity of their own until the next bundle counts them.
    new_item_popularity_quantile: the popularity they are given meanwhile, that quantile of the bundle items'
    popularity (0.5: a median item's), which orders them among popular items (a cold start's rules path) and is
    their click probability in Rank for a user without history; cold_start_new_slots: slots of a cold start's
    Recommend slate (no rules) held for the newest new items, a shop's "new arrivals", since a median popularity
    would rarely reach a top k (0: popularity alone)."""

    interval_s: float = 1.0
    page: int = 10_000
    max_new_items: int = 10_000
    embed_batch: int = 64
    new_item_popularity_quantile: float = 0.5
    cold_start_new_slots: int = 1

    def __post_init__(self):
        if not 0.0 <= float(self.new_item_popularity_quantile) <= 1.0:
            raise ValueError(f"live_catalog.new_item_popularity_quantile must be in [0, 1], got "
                             f"{self.new_item_popularity_quantile!r}")
        if int(self.cold_start_new_slots) < 0:
            raise ValueError(f"live_catalog.cold_start_new_slots must be >= 0, got {self.cold_start_new_slots!r}")


class LiveCatalog:
    """A replica's cached view of the catalogue change log (see the module docstring)."""

    def __init__(self, store, config: LiveCatalogConfig | None = None, lock: threading.Lock | None = None):
        self.store, self.config = store, config or LiveCatalogConfig()
        self._lock = lock or threading.Lock()  # the store's connection, shared with the caller's other reads
        self.generation = 0  # bumped whenever the blocked set changes
        self._blocked: set[str] = set()
        self._state = CatalogState()  # the log alone folded, by the same rules as the next bundle's prepare
        self._given: dict[str, frozenset[str]] = {}  # id -> the fields the log gave it since its last retire
        self._checked = -float("inf")
        self._cache: dict = {}

    def due(self) -> bool:
        return time.monotonic() - self._checked >= self.config.interval_s

    def refresh(self, force: bool = False) -> Exception | None:
        """Read the changes after the last one seen (when due or forced) and fold them in."""
        if not force and not self.due():
            return None
        self._checked = time.monotonic()
        try:
            while True:
                with self._lock:
                    changes = self.store.read_catalog_since(self.last_id, self.config.page)
                if not changes:
                    return None
                self._apply(changes)
                if len(changes) < self.config.page:
                    return None
        except Exception as e:  # noqa: BLE001 - the store away: keep the last state, the caller logs it
            return e

    @property
    def written(self) -> dict[str, dict]:
        """id -> fields of the items upserted (and not retired since) through the log."""
        return self._state.items

    @property
    def last_id(self) -> int:
        return self._state.last_id

    def given(self) -> dict[str, dict]:
        """id -> the fields the log itself gave the item since its last retire, with their current values: an
        upsert that names a bundle item's price alone changes its price, not its brand (prefmine.serving.new_items
        .with_updates)."""
        items = self._state.items
        return {item: {k: v for k, v in items[item].items() if k in names}
                for item, names in self._given.items() if item in items}

    def _apply(self, changes) -> None:
        for c in changes:
            if c.op == "retire":
                self._given.pop(c.item, None)
            else:
                self._given[c.item] = self._given.get(c.item, frozenset()) | frozenset(c.fields)
        blocked = set(self._blocked)
        for item in self._state.apply(changes):
            if self._state.servable(item):
                blocked.discard(item)
            else:  # retired, or upserted with available=false
                blocked.add(item)
        if blocked != self._blocked:
            self._blocked = blocked
            self.generation += 1
            self._cache.clear()

    @property
    def blocked(self) -> frozenset[str]:
        return frozenset(self._blocked)

    def blocked_indices(self, key, item_index: Callable[[str], int | None]) -> frozenset[int]:
        """The blocked ids that one bundle holds, as its item indexes (cached per bundle key and log state)."""
        got = self._cache.get(key)
        if got is None:
            if len(self._cache) >= 8:  # keys of earlier new-item snapshots: bounded
                self._cache.clear()
            got = frozenset(int(i) for i in map(item_index, self._blocked) if i is not None)
            self._cache[key] = got
        return got
