"""What a replica holds of a bundle version, so that a new version can be rolled in while requests flow.

A rollout changes the application's ``user_config`` (``{"bundle": PATH, "version": V}``): a lightweight Serve
update, so no replica restarts; each replica's ``reconfigure`` loads the new version beside the old one. Every
request is answered by one version from end to end: the ingress takes its ``ServedBundle`` once per request and
passes that version's ``BundleRef`` on every call to the ranker, policy and encoder deployments, whose
``RuntimeCache`` answers with the runtime of exactly that version (loading it if this replica has not yet). So
during the switch some requests are answered by the old version and some by the new one, but none mixes them
(a ranker of one version scoring item indices of another) and none fails.

A version is read from its own directory, which must stay as it is while any replica may still load it:
publish each version to a new path (``prefmine train ... --out bundles/V``) and roll it in by pointing the server
there. A directory rewritten in place under a running version is detected (the manifest's version no longer
matches) and refused with a clear error, not served inconsistently. A version may also be named by a URI
(``s3://...``): each replica fetches it into its own node's cache (``check_bundle_files``), and a replica that
finds another version published there by then refuses to start with it, the same way. Before a replica loads a version it checks
the bundle against its manifest (prefmine.integrity.verify: every file's sha256, and the signature when the
server holds a bundle key), so a changed or unsigned file is refused before anything deserialises it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prefmine.rules import ItemAttributes
from prefmine.search.bundle import has_index
from prefmine.serving.recommend import first_outside, popularity_order

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class BundleRef:
    """One bundle version: its location (a directory, or a URI each replica fetches from: ``local_dir``) and the
    version its manifest names."""

    path: str
    version: str
    # new catalogue items a request is answered with (serve.new_items.ItemsRef); not part of the version's identity
    items: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, config: dict) -> BundleRef:
        """From a deployment's user_config ``{"bundle": PATH, "version": V}``."""
        if not isinstance(config, dict) or not config.get("bundle"):
            raise ValueError(f"user_config: needs 'bundle' (a bundle directory or URI), got {config!r}")
        return cls(str(config["bundle"]), str(config.get("version") or manifest_version(config["bundle"])))

    def config(self) -> dict:
        return {"bundle": self.path, "version": self.version}


def pinned_refs(config: dict) -> tuple[BundleRef, ...]:
    """The versions an A/B experiment's version arms pin (user_config ``"pinned": [{"bundle", "version"}, ...]``,
    serve.app.arm_versions): loaded beside the served version and never released, whatever is rolled in."""
    if not isinstance(config, dict):
        return ()
    return tuple(BundleRef.of(c) for c in config.get("pinned") or ())


def manifest_version(path: str | Path) -> str:
    """The version the manifest at `path` (a directory or a URI) names."""
    from prefmine.store import is_uri, read_manifest

    if is_uri(path):
        return str(read_manifest(path).get("version", ""))
    return str(json.loads((Path(path) / "manifest.json").read_text()).get("version", ""))


class StaleBundle(RuntimeError):
    """The directory of a version now holds another version (rewritten in place during a rollout), or the URI of
    one another version (published over since the deploy)."""


def check_version(ref: BundleRef, found: str | None = None) -> None:
    """Raise StaleBundle unless the bundle at ``ref.path`` (or ``found``, the version read from its copy) is
    ``ref.version``."""
    found = manifest_version(ref.path) if found is None else found
    if found == ref.version:
        return
    from prefmine.store import is_uri

    why = ("the location moved on since the deploy: roll the new version in (SIGHUP / redeploy)" if is_uri(ref.path)
           else "publish each version to its own directory to roll it in")
    raise StaleBundle(f"bundle {ref.path} now holds version {found!r}, not {ref.version!r}: {why}")


def check_bundle_files(ref: BundleRef) -> str:
    """The local directory to read ``ref``'s files from, once its version is the one named and every file is as
    its manifest lists it (IntegrityError otherwise).

    A directory is read in place. A URI is fetched by this replica itself into its node's cache
    (prefmine.store.fetch: StoreConfig.cache_dir, $PREFMINE_BUNDLE_CACHE), downloaded by the first replica of
    the node that needs the version, so nothing a replica reads depends on the driver's disk. A location that
    holds another version by now (published over since the deploy) is refused: the replica must serve the
    version the application names, or none."""
    from prefmine.integrity import verify
    from prefmine.store import fetch, is_uri

    if not is_uri(ref.path):
        check_version(ref)
        verify(ref.path)
        return ref.path
    local = fetch(ref.path)
    check_version(ref, manifest_version(local))
    return str(local)


class RuntimeCache:
    """A replica's runtimes by bundle version: the serving one and, during a rollout, the next (LRU, ``keep``),
    plus the versions that A/B arms pin (``pinned``: held whatever is rolled in, not counted in ``keep``).

    ``await get(ref)`` loads a version once (in a worker thread, so the replica keeps answering requests of the
    version it already holds meanwhile); concurrent first requests for it wait for the same load.
    """

    def __init__(self, load: Callable[[str], Any], keep: int = 2):
        self.load, self.keep = load, keep
        self.pinned: frozenset[BundleRef] = frozenset()
        self._items: OrderedDict[BundleRef, Any] = OrderedDict()
        self._loading: dict[BundleRef, asyncio.Lock] = {}

    async def get(self, ref: BundleRef) -> Any:
        if ref.items is not None:  # the version alone is the key (a request's new items are not kept here)
            ref = replace(ref, items=None)
        rt = self._items.get(ref)
        if rt is not None:
            self._items.move_to_end(ref)
            return rt
        lock = self._loading.setdefault(ref, asyncio.Lock())
        try:
            async with lock:
                rt = self._items.get(ref)
                if rt is None:  # the version and files are checked in the worker thread (check_bundle_files)
                    rt = self._items[ref] = await asyncio.to_thread(self._load, ref)
                    logger.info("loaded bundle %s (%s)", ref.version, ref.path)
                    self.trim()
        finally:  # a failed load leaves no lock behind; the next request for the version tries again
            if not lock.locked():
                self._loading.pop(ref, None)
        return rt

    def trim(self) -> None:
        """Drop the least recently used versions beyond ``keep``, pinned ones aside (in-flight requests keep
        their reference)."""
        loose = [r for r in self._items if r not in self.pinned]
        for old in loose[:max(0, len(loose) - self.keep)]:
            del self._items[old]
            logger.info("released bundle %s", old.version)

    def _load(self, ref: BundleRef) -> Any:
        return self.load(check_bundle_files(ref))

    def versions(self) -> list[str]:
        return [r.version for r in self._items]


async def adopt(config: dict, *caches: RuntimeCache) -> None:
    """A deployment's ``reconfigure``: load the version ``config`` names into each of the replica's caches.

    A version that does not load (a bundle that passed the checks but whose weights are broken, say) is refused
    by a replica that already serves one: it logs the error and keeps what it holds, and stays healthy, so a bad
    rollout cannot take the service down; the ingress, which switches only once every part has loaded the new
    version (RecommenderIngress.reconfigure), keeps answering with the old one. On a fresh replica the error is
    raised: a replica with nothing to serve must not count as started. The versions A/B arms pin (``pinned``)
    are loaded as well, and held."""
    ref, pinned = BundleRef.of(config), pinned_refs(config)
    try:
        for cache in caches:
            cache.pinned = frozenset(pinned)
            for r in (ref, *pinned):
                await cache.get(r)
            cache.trim()  # a version pinned before and no longer is an ordinary one again
    except Exception as e:  # noqa: BLE001 - refused, reported, and the replica serves on
        if not any(cache.versions() for cache in caches):
            raise
        logger.error("bundle %s (%s) did not load, refused; still holding %s: %s: %s", ref.version, ref.path,
                     sorted({v for cache in caches for v in cache.versions()}), type(e).__name__, e)


class ServedBundle:
    """The ingress's view of one bundle version: catalogue, user histories, popularity, texts for reasons, the
    items' attributes that request-time rules filter on (categories, brand, price, availability, kind; built once
    per version) and whether Search is hybrid."""

    def __init__(self, ref: BundleRef):
        from prefmine.bundle import Bundle
        from serve.profile import CatalogText

        path = check_bundle_files(ref)  # a local directory (this node's cached copy of a URI)
        self.ref = ref
        self.bundle = Bundle.load(path)
        if str(self.bundle.version) != ref.version:
            raise StaleBundle(f"bundle {ref.path}: loaded version {self.bundle.version!r}, not {ref.version!r}")
        if not getattr(self.bundle, "key_matches", True):
            logger.warning("PREFMINE_PSEUDONYM_KEY differs from the key the bundle's data was prepared with: "
                           "every user will look unknown (cold start)")
        self.version = str(self.bundle.version)
        self.titles = [str(t) if t is not None else "" for t in self.bundle.titles]
        self.item_ids = [str(i) for i in self.bundle.item_ids]
        pop = np.asarray(self.bundle.popularity, dtype=np.float64)
        self.pop_order = popularity_order(pop)
        self.pop_scores = pop
        self.pop_share = pop / pop.sum() if pop.sum() > 0 else np.full(len(pop), 1.0 / max(1, len(pop)))
        self.catalog = CatalogText(self.bundle.items)
        self.attributes = ItemAttributes.from_items(self.bundle.items)  # what request-time rules filter on
        self.hybrid_search = has_index(path)  # a lexical index: Search is hybrid (else dense only)

    def exclude_set(self, raw_ids) -> set[int]:
        out = set()
        for raw in raw_ids:
            i = self.bundle.item_index(raw)
            if i is not None:
                out.add(int(i))
        return out

    def history(self, user_id: str, recent_events=()):
        """The user's history in the bundle, then the known items of recent_events in timestamp order, with their
        event types and times (a prefmine.serving.history.History: what the ranker reads)."""
        from prefmine.serving.history import with_recent

        return with_recent(self.bundle_history(self.bundle.pseudonymise(user_id)), recent_events,
                           self.bundle.item_index)

    def bundle_history(self, pseudonym: str):
        """The history this version's bundle holds for a pseudonymous user (a History; empty when unknown)."""
        from prefmine.serving.history import History

        return History.of(*self.bundle.history_inputs(pseudonym))

    def popular(self, k: int, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        items = first_outside(self.pop_order, k, exclude)  # the cold start `prefmine evaluate` scores too
        return items, self.pop_scores[items]
