"""EncoderDeployment: the bundle's text encoder per version (Search's dense or hybrid retrieval, ModelInfo's dim)."""

from __future__ import annotations

import numpy as np
from ray import serve

from prefmine.serving.vectors import nearest_rows, unit_rows
from serve.deployments.common import MAX_QUEUED, one_thread, require_loaded
from serve.new_items import Extensions
from serve.served import BundleRef, RuntimeCache, adopt


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3,
    max_queued_requests=MAX_QUEUED["EncoderDeployment"],
)
class EncoderDeployment:
    """Text encoder (prefmine.text.runtime.EncoderRuntime) per bundle version: embeds texts, gives the dim."""

    def __init__(self):
        one_thread()
        self.runtimes = RuntimeCache(_EncoderVersion)
        self.extended = Extensions()  # versions with new catalogue items appended (serve.new_items)

    async def reconfigure(self, config: dict) -> None:
        """A new bundle version (rollout): load it now, beside the one being served (serve.served.adopt)."""
        await adopt(config, self.runtimes)

    async def check_health(self) -> None:
        """Serve's periodic probe: unhealthy (and replaced) while no bundle version is loaded."""
        require_loaded(self.runtimes)

    async def prepare(self, ref: BundleRef) -> str:
        """Load ``ref`` if not yet held (raises if it does not load): the ingress's check before it switches."""
        await self.runtimes.get(ref)
        return ref.version

    async def dim(self, ref: BundleRef) -> int:
        return int((await self.runtimes.get(ref)).runtime.dim)

    async def embed(self, ref: BundleRef, texts: list[str]) -> np.ndarray:
        return (await self.runtimes.get(ref)).runtime.embed(list(texts))

    async def search(self, ref: BundleRef, query: str, n: int, allowed: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
        """The n items whose text embedding is closest (cosine) to the query's: Search's dense retrieval;
        ``allowed``: a boolean mask over the catalogue (the request's rules) the items must pass."""
        enc = await self.extended.get(await self.runtimes.get(ref), ref, _EncoderVersion.extended)
        return nearest_rows(enc.unit_items, np.asarray(enc.runtime.embed([query]), dtype=np.float32)[0], n,
                            allowed)

    async def hybrid_search(self, ref: BundleRef, query: str, k: int, allowed: np.ndarray | None = None
                            ) -> dict | None:
        """Search's hybrid retrieval (prefmine.search.Searcher.retrieve: BM25 and dense candidates among the
        ``allowed`` items, fused, with facet counts): ``{"pool": Pool, "config": SearchConfig}`` for the ingress
        to personalise and finish; None when this version has no lexical index."""
        enc = await self.extended.get(await self.runtimes.get(ref), ref, _EncoderVersion.extended)
        if enc.searcher is None:
            return None
        q = np.asarray(enc.runtime.embed([query]), dtype=np.float32)[0]
        return {"pool": enc.searcher.retrieve(query, q, k, mask=allowed), "config": enc.searcher.config}


class _EncoderVersion:
    def __init__(self, bundle: str):
        from prefmine.search.bundle import load_bundle_searcher
        from prefmine.text.runtime import EncoderRuntime

        self.runtime = EncoderRuntime(bundle)
        self.unit_items = unit_rows(self.runtime.item_embeddings)
        self.searcher = load_bundle_searcher(bundle, self.runtime.item_embeddings)  # None: dense Search only

    def extended(self, new) -> _EncoderVersion:
        """This version with new catalogue items appended (prefmine.serving.new_items.NewItems): their text
        vectors searched densely, their titles in a side lexical index."""
        out = object.__new__(_EncoderVersion)
        out.runtime = self.runtime
        out.searcher = self.searcher.extended(new.search_catalog(), new.text_vectors) \
            if self.searcher is not None else None
        # the searcher's unit rows are these same rows: one copy of them, not two
        out.unit_items = out.searcher.unit if out.searcher is not None else \
            np.concatenate([self.unit_items, new.text_vectors])
        return out
