"""Search, SimilarItems and Rank: text retrieval (hybrid BM25 + dense with facets, or dense alone) personalised by
the ranker; the items nearest an item in the ranker's space; client-supplied candidates by expected value. Each
honours the live catalogue (retired and unavailable items never come back) and the request's rules."""

from __future__ import annotations

import asyncio

import numpy as np

from prefmine.search.engine import finish as finish_search
from prefmine.serving import responses
from prefmine.serving.rank import expected_value_order, rank_candidates
from prefmine.serving.request_rules import allowed_mask, own_scores
from prefmine.serving.search import SearchScores, blend, search_order
from prefmine.v1 import recommender_pb2 as pb
from serve.live_catalog import blocked_items, drop_blocked, without
from serve.rpc_common import IngressParts, NotFound
from serve.served import ServedBundle

SEARCH_CANDIDATES = 100  # items the encoder retrieves for Search before the blend (dense retrieval)


class SearchRpcs(IngressParts):
    """Search, SimilarItems and Rank (RecommenderIngress validates and calls `_search`, `_similar`, `_rank`)."""

    async def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        s = await self._live()
        k = int(request.k)
        rules = self._rules(s, request.rules, exclude_seen=False) if request.HasField("rules") else None
        mask = allowed_mask(s.attributes, rules) if rules is not None else None
        mask = without(mask, await blocked_items(self.live_catalog, s), s.n_items)
        history = await self._history(s, request.user_id)
        cold = len(history) == 0
        if s.hybrid_search:  # BM25 + dense, fused, personalised (prefmine.search), with facets
            got = await self._call(self.encoder.hybrid_search, s.ref, request.query, k, mask)
            pool = got["pool"]
            personal = None if cold or not len(pool.idx) else \
                (await self._call(self.ranker.score_items, s.ref, history, pool.idx))["scores"]
            hit = finish_search(pool, len(pool.idx), personal, got["config"])
            scored = SearchScores(hit.idx, hit.score, hit.dense, hit.lexical,
                                  np.zeros(len(hit.idx)) if personal is None else hit.personal)
            facets, retrieval = hit.facets, "hybrid"
        else:  # the text embeddings alone
            hits = await self._call(self.encoder.search, s.ref, request.query, max(k, SEARCH_CANDIDATES), mask)
            idx = np.asarray(hits["idx"], np.int64)
            relevance = None if cold or not len(idx) else \
                (await self._call(self.ranker.score_items, s.ref, history, idx))["scores"]
            final, relevance = blend(hits["sims"], relevance)
            order = search_order(final, len(idx))
            scored = SearchScores(idx[order], final[order], np.asarray(hits["sims"], np.float64)[order],
                                  np.zeros(len(idx)), np.asarray(relevance, np.float64)[order])
            facets, retrieval = {}, "dense"
        if rules is None:
            items = scored.idx[:k]
        else:
            async def fetch(n: int):
                return scored.idx[:n], scored.score[:n]

            items, _ = await self._ruled(s, rules, k, len(scored.idx), fetch, allowed=mask)  # no retired pin
        return responses.search_response(s, scored, items, cold, facets, retrieval)

    async def _similar(self, request: pb.SimilarItemsRequest) -> pb.SimilarItemsResponse:
        s = await self._live()
        i = s.item_index(request.item_id)
        if i is None:
            raise NotFound(f"item_id {request.item_id[:64]!r} is not in the catalogue")
        if request.HasField("rules"):
            return await self._similar_ruled(s, request, int(i))
        blocked = await blocked_items(self.live_catalog, s)
        got = await self._call(self.ranker.similar, s.ref, int(i), int(request.k) + len(blocked))
        return responses.similar_response(s, *drop_blocked(got["idx"], got["sims"], blocked, int(request.k)))

    async def _similar_ruled(self, s: ServedBundle, request: pb.SimilarItemsRequest, item: int
                             ) -> pb.SimilarItemsResponse:
        """SimilarItems with rules: every other item's similarity (one ranker call), the rules' selection over the
        best of those the rules allow; each item keeps its own similarity."""
        rules = self._rules(s, request.rules, exclude_seen=False)
        blocked = await blocked_items(self.live_catalog, s)
        mask = allowed_mask(s.attributes, rules, exclude=[item, *blocked])
        got = await self._call(self.ranker.similar, s.ref, item, int(s.n_items))
        idx, sims = np.asarray(got["idx"], np.int64), np.asarray(got["sims"], np.float64)
        keep = mask[idx]
        idx, sims = idx[keep], sims[keep]

        async def fetch(n: int):
            return idx[:n], sims[:n]

        items, _ = await self._ruled(s, rules, int(request.k), len(idx), fetch, exclude=[item], allowed=mask)
        return responses.similar_response(s, items, own_scores(items, idx, sims))

    async def _rank(self, request: pb.RankRequest) -> pb.RankResponse:
        """New catalogue items are ranked like the bundle's (the ranker's extended runtime; their prior popularity
        for a cold start); retired and unavailable items are answered as unknown ids."""
        s = await self._live()
        blocked = await blocked_items(self.live_catalog, s)

        def item_index(raw: str) -> int | None:
            i = s.item_index(raw)
            return None if i is None or int(i) in blocked else i

        cands = rank_candidates(request.candidate_item_ids, request.bids, item_index, request.campaign_ids)
        history = await self._history(s, request.user_id)
        cold = len(history) == 0
        if len(cands.items) == 0:
            probs = np.zeros(0)
        elif cold:
            probs = s.pop_share[cands.items]
        else:
            got = await self._call(self.ranker.score_items, s.ref, history, cands.items)
            probs = np.asarray(got["probs"], np.float64)
        ads, calibrated = None, False
        if request.campaign_ids:  # sponsored candidates: the ad auction on the store's shared ledger
            cal = await asyncio.to_thread(self.ads.calibrator, s.ref)
            if cal is not None and not cold and len(probs):  # the ranker's probabilities (not popularity shares)
                probs, calibrated = cal(probs), True
            user = s.bundle.pseudonymise(request.user_id)
            erased = user in self.erased  # nothing is logged about them; capped in memory (serve/rpc_ads.py)

            def run():
                with self._feedback_lock:
                    return self.ads.run(self.feedback, user, cands.raw_ids, cands.campaigns, cands.bids, probs,
                                        erased=erased)

            ads = await asyncio.shield(asyncio.to_thread(run))  # holds are taken whole, like RecordFeedback
        ev, order = expected_value_order(probs, cands.bids, cands.positions)
        return responses.rank_response(s, cands, probs, ev, order, cold, ads, calibrated)
