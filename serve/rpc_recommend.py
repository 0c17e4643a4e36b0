"""The Recommend RPC: the user's slate from the ranker's candidates ordered by the served policy (the user's A/B
arm's, when an experiment is on), popularity for a cold start, or the request's rules' selection; explanations; and
the impression log, written durably before the answer carries its id."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np

from prefmine.serving import responses
from prefmine.serving.arms import arm_of
from prefmine.serving.history import History
from prefmine.serving.recommend import candidate_count
from prefmine.serving.request_rules import allowed_mask
from prefmine.serving.slate import logged_propensities, slate_relevance, slate_scores
from prefmine.v1 import recommender_pb2 as pb
from serve.live_catalog import blocked_items
from serve.rpc_common import ImpressionNotLogged, IngressParts
from serve.served import ServedBundle

logger = logging.getLogger("ray.serve")
NEW_ITEM_REASON = "new in the catalogue"  # a cold start's reason for a new item (serve.new_items)
RULES_POLICY = "rules"  # the impression log's policy of a Recommend slate chosen by the request's rules


class RecommendRpcs(IngressParts):
    """Recommend (RecommenderIngress.Recommend validates and calls `_recommend`)."""

    experiment: object  # prefmine.experiments.Experiment | None

    async def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        # the user's arm: its bundle version (one an arm pins, else the served one) answers, its policy orders
        arm = arm_of(self.experiment, self.served.bundle.pseudonymise(request.user_id))
        s = await self._live(arm and arm.bundle)
        k = int(request.k)
        exclude = s.exclude_set(request.exclude_item_ids) | await blocked_items(self.live_catalog, s)
        history = await self._history(s, request.user_id, request.recent_events)
        if request.HasField("rules"):
            return await self._recommend_ruled(s, request, k, exclude, history)
        if len(history) == 0:
            items, scores = s.popular(k, exclude)
            resp = responses.recommend_response(s, items, scores, cold_start=True, placement=request.placement)
            if request.explain:
                await self._explain(s, resp, items, history)
            return await self._log_impression(s, request, resp, np.ones(len(resp.items)), "popularity")
        exclude |= set(history.items.tolist())
        n = candidate_count(k, self.n_candidates, s.n_items, len(exclude))
        if n <= 0:
            resp = responses.recommend_response(s, np.zeros(0, np.int64), np.zeros(0), cold_start=False,
                                                placement=request.placement)
            return await self._log_impression(s, request, resp, np.zeros(0), "none")
        # one hop: the ranker replica also selects the slate with the same version's policy (RankerDeployment.slate)
        cand = await self._call(self.ranker.slate, s.ref, history, n, exclude, k, arm and arm.policy)
        slate = np.asarray(cand["slate"], np.int64)
        relevance = slate_relevance(cand["idx"], cand["scores"], slate)
        resp = responses.recommend_response(s, slate, slate_scores(relevance), cold_start=False,
                                            placement=request.placement)
        if request.explain:
            await self._explain(s, resp, slate, history)
        return await self._log_impression(s, request, resp, cand["propensities"], cand["policy"])

    async def _explain(self, s: ServedBundle, resp: pb.RecommendResponse, items, history: History) -> None:
        """Each shown item's reason: for a cold start its popularity (or that it is new), else the history item it is most similar to
        (the ranker's item vectors)."""
        if not len(items):
            return
        if len(history) == 0:
            n_bundle = int(s.bundle.n_items)  # items after the bundle's are new catalogue items (no interactions)
            for it, i in zip(resp.items, items):
                it.reason = NEW_ITEM_REASON if int(i) >= n_bundle else \
                    s.catalog.reason(int(i), None, None, s.pop_scores[int(i)])
            return
        why = await self._call(self.ranker.explain, s.ref, history.items, items)
        for it, i, src, sim in zip(resp.items, items, why["source"], why["sims"]):
            it.reason = s.catalog.reason(int(i), int(src), float(sim), None)

    async def _recommend_ruled(self, s: ServedBundle, request: pb.RecommendRequest, k: int, exclude: set[int],
                               history: History) -> pb.RecommendResponse:
        """Recommend with rules: the rules' selection (prefmine.rules.select) over the ranker's best candidates
        among the items the rules allow (popularity's for a cold start), logged with policy "rules" and
        propensity 1.0 per item (the selection is deterministic; the slate policy is not consulted)."""
        rules = self._rules(s, request.rules)
        cold = len(history) == 0
        now = time.time()  # repurchase gaps count to the request's time
        mask = allowed_mask(s.attributes, rules, history.items, sorted(exclude), history.times, now)
        if cold:
            ordered = s.pop_order[mask[s.pop_order]]

            async def fetch(n: int):
                return ordered[:n], s.pop_scores[ordered[:n]]
        else:
            ineligible = set(np.flatnonzero(~mask).tolist())

            async def fetch(n: int):
                cand = await self._call(self.ranker.candidates, s.ref, history, n, ineligible)
                return np.asarray(cand["idx"], np.int64), np.asarray(cand["scores"], np.float64)

        items, scores = await self._ruled(s, rules, k, int(mask.sum()), fetch, history.items, exclude,
                                          history.times, now, allowed=mask)
        resp = responses.recommend_response(s, items, slate_scores(scores), cold_start=cold,
                                            placement=request.placement)
        if request.explain:
            await self._explain(s, resp, items, history)
        return await self._log_impression(s, request, resp, np.ones(len(resp.items)), RULES_POLICY)

    async def _log_impression(self, s: ServedBundle, request: pb.RecommendRequest, resp: pb.RecommendResponse,
                              propensities, policy: str) -> pb.RecommendResponse:
        """Log what `resp` shows under a new impression id (uuid4), durably, and only then return it carrying
        the id, each item's propensity and the user's A/B arm. A failed append raises ImpressionNotLogged
        (UNAVAILABLE): an answer is never shown unlogged. The append is shielded like RecordFeedback's: a client
        that goes away does not cancel it half-way (an impression may then be logged that nobody saw, never the
        reverse)."""
        from prefmine.feedback import Impression

        props = logged_propensities(propensities)
        user = s.bundle.pseudonymise(request.user_id)
        arm = arm_of(self.experiment, user)
        logged_arm = arm.name if arm is not None else ""
        if user in self.erased:  # nothing new is stored about an erased person: the impression stays anonymous
            user = logged_arm = ""
        imp = Impression(impression_id=str(uuid.uuid4()), user=user,
                         ts=int(time.time()), items=[it.item_id for it in resp.items],
                         positions=list(range(len(resp.items))), propensities=props, policy=str(policy),
                         bundle_version=resp.bundle_version, arm=logged_arm)

        def append() -> None:
            with self._feedback_lock:
                self.feedback.append_impression(imp)

        try:
            await asyncio.shield(asyncio.to_thread(append))
        except Exception as e:  # noqa: BLE001 - any store failure: refuse to show the slate
            logger.error("impression not logged (%s: %s); answering UNAVAILABLE", type(e).__name__, e)
            raise ImpressionNotLogged("the impression log is unavailable; retry later") from None
        for it, p in zip(resp.items, props):
            it.propensity = p
        resp.impression_id = imp.impression_id
        if arm is not None:
            resp.arm = arm.name
            self.metrics.arm_impression(self.experiment.name, arm.name)
        return resp
