"""RecommenderIngress: the gRPC ingress of prefmine.v1.Recommender and grpc.health.v1.Health.

Its methods are named like the RPCs and take ``(request, grpc_context)``. Every call goes through ``_serve``: API
key from the metadata, its scope and its rate limit first, before any other work (serve/auth.py; not for
health), then a request the proxy could not parse (serve/wire.py's ``Malformed``), field validation
(serve/validate.py), then the work; its status code and time go to the Prometheus metrics (serve/metrics.py).
The work of each RPC is thin: resolve the user (pseudonymised with the bundle's key, history from the bundle's
catalogue plus the user's newer events in the feedback log, empty for an erased person), call the ranker or
encoder deployment, and build the answer with prefmine.serving. No exception escapes (Ray would send INTERNAL
with a traceback): UNAUTHENTICATED, PERMISSION_DENIED (scope), INVALID_ARGUMENT naming the field,
RESOURCE_EXHAUSTED (size, rate limit, a full queue), NOT_FOUND, FAILED_PRECONDITION (an erased person's
feedback), UNAVAILABLE (the feedback or impression log cannot write), or INTERNAL with a short message, each with
an empty response.

RecordFeedback appends to the feedback log (prefmine.feedback: SQLite WAL, or PostgreSQL for several nodes;
durable commits) with the request's idempotency key, and answers only after the commit returned. Recommend logs
its answer as an impression in the same store (id, pseudonym, items, propensities, policy, bundle version)
before answering with the id. A call whose replica died is retried (``_call``), so losing a replica costs
latency, not failed requests.

Same-session feedback: Recommend, Search and Rank read the user's newest events in the feedback log that are
newer than the bundle's history of them (one indexed query, at most SESSION_EVENTS rows) and score the history
they extend (prefmine.serving.history.with_session), so a click recorded a moment ago changes the next answer
without a new bundle. A log that does not answer is logged, counted, and the request answered from the bundle's
history alone.

A/B arms: with an ``experiment`` (prefmine.experiments, checked by prefmine.serving.arms), every Recommend is
served by its user's arm (a stable hash of the pseudonym): the arm's policy orders the slate, the answer and its
impression carry the arm's name, and per-arm counters count impressions, clicks and purchases (serve/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from prefmine.feedback.base import StoreUnavailable
from prefmine.rules import Rules
from prefmine.search.engine import finish as finish_search
from prefmine.serving import responses
from prefmine.serving.arms import arm_of, servable_experiment
from prefmine.serving.history import History, history_end, logged_events, with_session
from prefmine.serving.rank import expected_value_order, rank_candidates
from prefmine.serving.recommend import DEFAULT_CANDIDATES, candidate_count
from prefmine.serving.request_rules import allowed_mask, own_scores, ruled_top, rules_of, unanswerable
from prefmine.serving.search import SearchScores, blend, search_order
from prefmine.serving.slate import logged_propensities, slate_relevance, slate_scores
from prefmine.v1 import recommender_pb2 as pb
from serve.auth import ApiKeyCheck, AuthConfig, PermissionDenied, RateLimited, Unauthenticated
from serve.catalog_rpc import KnownItems, write_catalog
from serve.deployments.common import MAX_QUEUED, one_thread
from serve.live_catalog import blocked_items, drop_blocked, poll, without
from serve.metrics import ServiceMetrics
from serve.new_items import LiveItems
from serve.served import BundleRef, ServedBundle
from serve.validate import (
    EVENT_NAMES,
    BadRequest,
    validate_feedback,
    validate_profile,
    validate_rank,
    validate_request,
    validate_search,
    validate_similar,
)
from serve.wire import SERVICE, Malformed

logger = logging.getLogger("ray.serve")

SEARCH_CANDIDATES = 100  # items the encoder retrieves for Search before the blend (dense retrieval)
RULES_POLICY = "rules"  # the impression log's policy of a Recommend slate chosen by the request's rules
REPLICA_RETRY_S = 20.0  # how long the ingress retries a call whose replica died (ranker, encoder)
TOMBSTONE_CHECK_S = 2.0  # how often an ingress replica looks whether the tombstone list changed


class ImpressionNotLogged(RuntimeError):
    """The impression log did not take a Recommend answer: nothing is shown that was not logged (UNAVAILABLE)."""


class Erased(Exception):
    """The request names a person who was erased (on the tombstone list): answered FAILED_PRECONDITION."""


class NotFound(LookupError):
    """The subject of a call (SimilarItems' item) is unknown; the message names the field."""


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_constructor_retry_count=3,
                  max_queued_requests=MAX_QUEUED["RecommenderIngress"])
class RecommenderIngress:
    """gRPC ingress for prefmine.v1.Recommender and grpc.health.v1.Health (methods named like the RPCs)."""

    def __init__(
        self,
        ranker: DeploymentHandle,
        encoder: DeploymentHandle,
        candidates: int = DEFAULT_CANDIDATES,
        feedback_db: str | None = None,
        auth: dict | None = None,
        tls: dict | None = None,
        tombstones: str | None = None,
        experiment: dict | None = None,
        live_catalog: dict | None = None,
    ):
        one_thread()
        from prefmine.feedback import open_feedback_store
        from serve.tls import TlsConfig, install_direct_ingress_tls

        tls_config = TlsConfig(**(tls or {}))
        if tls_config.enabled:  # before Serve starts this replica's direct-ingress gRPC server (if on)
            install_direct_ingress_tls(tls_config)

        self.ranker, self.encoder = ranker, encoder
        self.n_candidates = int(candidates)
        self.served: ServedBundle | None = None  # set by reconfigure (user_config), before the first request
        self._dims: dict[BundleRef, int] = {}
        self.auth = ApiKeyCheck(AuthConfig(**(auth or {"required": False})))
        if not self.auth.required:
            logger.warning("API-key authentication is OFF (demo mode): every caller is accepted")
        if not feedback_db:
            raise ValueError("RecommenderIngress: feedback_db is required (build_app gives the default)")
        self.feedback = open_feedback_store(feedback_db)
        # erased people (prefmine/data/tombstones.py): re-read when the file changes, checked every few seconds
        from prefmine.data.tombstones import TombstoneWatcher

        self.erased = TombstoneWatcher(tombstones, interval_s=TOMBSTONE_CHECK_S)
        if tombstones is None:
            logger.warning("no tombstone list: erasures reach serving only with a new bundle")
        self.metrics = ServiceMetrics()
        self.experiment = servable_experiment(experiment) if experiment else None  # A/B arms (None: no split)
        self._feedback_lock = threading.Lock()  # one sqlite3 connection, used from worker threads
        from prefmine.serving.live_catalog import LiveCatalog, LiveCatalogConfig

        # retired / unavailable items (the store's catalogue change log, polled about every second)
        self.live_catalog = LiveCatalog(self.feedback, LiveCatalogConfig(**(live_catalog or {})),
                                        lock=self._feedback_lock)
        self.new_items = LiveItems(ranker, encoder, self._call, self.live_catalog.config)  # items written since

    async def _live(self):
        """The served bundle with the catalogue's new items appended (serve.new_items); the log polled when due."""
        await poll(self.live_catalog)
        return self.new_items.view(self.served, self.live_catalog)

    async def check_health(self) -> None:
        """Serve's periodic probe: unhealthy (and replaced) while no bundle version is served or the feedback log
        does not answer a query."""
        if self.served is None:
            raise RuntimeError("no bundle version is served")

        def probe() -> None:
            with self._feedback_lock:
                self.feedback.count("__prefmine_health_probe__")

        await asyncio.to_thread(probe)

    async def reconfigure(self, config: dict) -> None:
        """Serve the bundle version of ``config`` (user_config ``{"bundle": PATH, "version": V}``): loaded in a
        worker thread while the current version keeps answering, then swapped in at once, after the ranker
        (with its policy) and the encoder have each loaded it too (``prepare``). A request already running
        finishes on the version it started with. A version that does not load in some part is refused and logged, and the
        current one keeps serving (ModelInfo still reports it; serve.run.rollout then rolls the config back)."""
        ref = BundleRef.of(config)
        if self.served is not None and self.served.ref == ref:
            return
        try:
            new = await asyncio.to_thread(ServedBundle, ref)
            if self.served is not None:  # a rollout: switch only once every part holds the new version
                await asyncio.gather(*(self._call(part.prepare, ref)
                                       for part in (self.ranker, self.encoder)))
        except Exception as e:  # noqa: BLE001 - a version that does not load is refused, the old one serves on
            if self.served is None:
                raise  # nothing to serve yet: the replica must not count as started
            logger.error("bundle %s (%s) refused, still serving %s: %s: %s", ref.version, ref.path,
                         self.served.version, type(e).__name__, e)
            return
        old, self.served = self.served, new
        self.metrics.serving(new.version, previous=old.version if old else None)
        logger.info("serving bundle %s%s", new.version, f" (was {old.version})" if old else "")

    # -- RPCs -----------------------------------------------------------------------------------------------
    async def Recommend(self, request, grpc_context) -> pb.RecommendResponse:
        """Ordered slate of up to k items for the (raw) user id; cold start from popularity."""
        return await self._serve("Recommend", request, grpc_context, pb.RecommendResponse, validate_request,
                                 self._recommend)

    async def Search(self, request, grpc_context) -> pb.SearchResponse:
        """Text retrieval by the encoder, re-ranked by the user's ranker relevance."""
        return await self._serve("Search", request, grpc_context, pb.SearchResponse, validate_search,
                                 self._search)

    async def Rank(self, request, grpc_context) -> pb.RankResponse:
        """Client-supplied candidates by expected value (next-interaction probability x bid)."""
        return await self._serve("Rank", request, grpc_context, pb.RankResponse, validate_rank, self._rank)

    async def SimilarItems(self, request, grpc_context) -> pb.SimilarItemsResponse:
        return await self._serve("SimilarItems", request, grpc_context, pb.SimilarItemsResponse,
                                 validate_similar, self._similar)

    async def GetUserProfile(self, request, grpc_context) -> pb.UserProfile:
        return await self._serve("GetUserProfile", request, grpc_context, pb.UserProfile, validate_profile,
                                 self._profile)

    async def RecordFeedback(self, request, grpc_context) -> pb.RecordFeedbackResponse:
        """Durably stores the events (committed to the WAL with synchronous=FULL) before answering."""
        return await self._serve("RecordFeedback", request, grpc_context, pb.RecordFeedbackResponse,
                                 validate_feedback, self._record_feedback)

    async def WriteCatalog(self, request, grpc_context) -> pb.WriteCatalogResponse:
        """Logs catalogue upserts and retirements durably (serve/catalog_rpc.py) before answering."""
        return await self._serve("WriteCatalog", request, grpc_context, pb.WriteCatalogResponse, None,
                                 self._write_catalog)

    async def _write_catalog(self, request: pb.WriteCatalogRequest) -> pb.WriteCatalogResponse:
        s, live = self.served, self.live_catalog

        def write() -> pb.WriteCatalogResponse:
            with self._feedback_lock:
                return write_catalog(self.feedback, request, known=KnownItems(s.bundle.item_index, live.written))

        return await asyncio.shield(asyncio.to_thread(write))  # as RecordFeedback: never cancelled half-way

    async def ModelInfo(self, request, grpc_context) -> pb.ModelInfoResponse:
        """Versions of the served bundle and its components."""
        return await self._serve("ModelInfo", request, grpc_context, pb.ModelInfoResponse, None,
                                 lambda _request: self._model_info())

    # grpc.health.v1.Health: no API key (probes carry none); reaching this method means proxy, routing and the
    # ingress replica work.
    async def Check(self, request, grpc_context) -> health_pb2.HealthCheckResponse:
        if isinstance(request, Malformed) or request.service not in ("", SERVICE):
            return self._fail(grpc_context, grpc.StatusCode.NOT_FOUND,
                              f"service: unknown service {getattr(request, 'service', '')!r}",
                              health_pb2.HealthCheckResponse())
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def List(self, request, grpc_context) -> health_pb2.HealthListResponse:
        ok = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        return health_pb2.HealthListResponse(statuses={"": ok, SERVICE: ok})

    def Watch(self, request, grpc_context):
        """Sends the current status once and ends (the proxy cannot hold a stream open for status changes)."""
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    # -- the common path of every RPC -------------------------------------------------------------------------
    async def _serve(self, rpc: str, request, grpc_context, empty_cls, validate, work):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            # the key, its scope and its rate first: an unknown caller gets no further than this
            self.auth.check(grpc_context.invocation_metadata() if grpc_context is not None else (), rpc)
            if isinstance(request, Malformed):
                code = request.status
                return self._fail(grpc_context, request.status, request.message, empty_cls())
            if validate is not None:
                validate(request)
            resp = await work(request)
            logger.debug("%s %.1f ms", rpc, 1e3 * (time.perf_counter() - t0))
            return resp
        except Unauthenticated as e:
            code = grpc.StatusCode.UNAUTHENTICATED
            return self._fail(grpc_context, code, str(e), empty_cls())
        except PermissionDenied as e:
            code = grpc.StatusCode.PERMISSION_DENIED
            return self._fail(grpc_context, code, str(e), empty_cls())
        except RateLimited as e:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            return self._fail(grpc_context, code, str(e), empty_cls())
        except BackPressureError:  # a deployment's queue is full (max_queued_requests): the caller retries later
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            return self._fail(grpc_context, code, "the service is overloaded; retry later", empty_cls())
        except BadRequest as e:
            code = grpc.StatusCode.INVALID_ARGUMENT
            return self._fail(grpc_context, code, str(e), empty_cls())
        except NotFound as e:
            code = grpc.StatusCode.NOT_FOUND
            return self._fail(grpc_context, code, str(e), empty_cls())
        except ImpressionNotLogged as e:
            code = grpc.StatusCode.UNAVAILABLE
            return self._fail(grpc_context, code, str(e), empty_cls())
        except StoreUnavailable:  # the feedback log cannot write (disk full, ...): rolled back, nothing acknowledged
            logger.error("%s: the feedback log cannot be written; answering UNAVAILABLE", rpc, exc_info=True)
            code = grpc.StatusCode.UNAVAILABLE
            return self._fail(grpc_context, code, "the feedback log is unavailable; retry later", empty_cls())
        except Erased as e:
            code = grpc.StatusCode.FAILED_PRECONDITION
            return self._fail(grpc_context, code, str(e), empty_cls())
        except asyncio.CancelledError:  # the client went away (deadline, cancel): stop, answer nothing
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:  # noqa: BLE001 - never let Ray turn it into INTERNAL + traceback
            logger.exception("%s failed", rpc)
            code = grpc.StatusCode.INTERNAL
            return self._fail(grpc_context, code, f"internal error in {rpc}", empty_cls())
        finally:
            self.metrics.observe(rpc, code.name, time.perf_counter() - t0)

    async def _call(self, method, *args):
        """``await method.remote(*args)`` on a deployment handle, again when the replica it reached died under it
        (killed, out of memory, its node lost): the router then picks another replica, or waits for the
        controller's replacement. Every method called this way only reads, so a retry is safe. Gives up after
        ``REPLICA_RETRY_S`` (below the proxy's 30 s request timeout) and lets the caller answer INTERNAL."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        t0, delay = time.monotonic(), 0.05
        while True:
            try:
                return await method.remote(*args)
            except (RayActorError, ActorUnavailableError) as e:
                if time.monotonic() - t0 + delay > REPLICA_RETRY_S:
                    raise
                self.metrics.replica_retry(getattr(method, "deployment_name", "?"))
                logger.warning("replica lost during a call (%s); retrying in %.2f s", type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    # -- helpers --------------------------------------------------------------------------------------------
    async def _history(self, s: ServedBundle, user_id: str, recent_events=()) -> History:
        """The user's history with event types and times: the bundle's, then the user's events in the feedback
        log newer than it and the request's recent events (with_session); empty for an erased person (answered
        like an unknown user without recent events). A feedback log that fails to answer leaves its events out
        (logged, counted), never the request."""
        pseudonym = s.bundle.pseudonymise(user_id)
        if pseudonym in self.erased:
            return History.of([])
        stored = s.bundle_history(pseudonym)

        def read() -> list[tuple] | None:
            with self._feedback_lock:
                return logged_events(self.feedback, pseudonym, history_end(stored))

        logged = await asyncio.to_thread(read)
        if logged is None:
            self.metrics.feedback_read_failed()
        return with_session(stored, logged or (), recent_events, s.bundle.item_index)

    @staticmethod
    def _fail(grpc_context, code: grpc.StatusCode, details: str, empty):
        if grpc_context is not None:
            grpc_context.set_code(code)
            grpc_context.set_details(details)
        return empty

    async def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        s = await self._live()
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
        arm = arm_of(self.experiment, s.bundle.pseudonymise(request.user_id))  # its policy orders the slate
        cand = await self._call(self.ranker.slate, s.ref, history, n, exclude, k, arm and arm.policy)
        slate = np.asarray(cand["slate"], np.int64)
        relevance = slate_relevance(cand["idx"], cand["scores"], slate)
        resp = responses.recommend_response(s, slate, slate_scores(relevance), cold_start=False,
                                            placement=request.placement)
        if request.explain:
            await self._explain(s, resp, slate, history)
        return await self._log_impression(s, request, resp, cand["propensities"], cand["policy"])

    async def _explain(self, s: ServedBundle, resp: pb.RecommendResponse, items, history: History) -> None:
        """Each shown item's reason: for a cold start its popularity, else the history item it is most similar to
        (the ranker's item vectors)."""
        if not len(items):
            return
        if len(history) == 0:
            for it, i in zip(resp.items, items):
                it.reason = s.catalog.reason(int(i), None, None, s.pop_scores[int(i)])
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
                                          history.times, now)
        resp = responses.recommend_response(s, items, slate_scores(scores), cold_start=cold,
                                            placement=request.placement)
        if request.explain:
            await self._explain(s, resp, items, history)
        return await self._log_impression(s, request, resp, np.ones(len(resp.items)), RULES_POLICY)

    @staticmethod
    def _rules(s: ServedBundle, msg: pb.Rules, exclude_seen: bool = True) -> Rules:
        """A validated Rules message as prefmine.rules.Rules; BadRequest when this catalogue cannot answer it."""
        why = unanswerable(s.attributes, msg)
        if why is not None:
            raise BadRequest(why)
        return rules_of(msg, exclude_seen)

    async def _ruled(self, s: ServedBundle, rules: Rules, k: int, available: int, fetch, history=(),
                     exclude=(), history_ts=(), now: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """prefmine.serving.request_rules.ruled_top from Recommend's candidate count on, MMR's vectors from the
        ranker."""
        async def vectors_of(items):
            return await self._call(self.ranker.vectors, s.ref, items)

        return await ruled_top(s.attributes, rules, k, available, candidate_count(k, self.n_candidates, available, 0),
                               fetch, vectors_of, history, exclude, history_ts, now)

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

            items, _ = await self._ruled(s, rules, k, len(scored.idx), fetch)
        return responses.search_response(s, scored, items, cold, facets, retrieval)

    async def _rank(self, request: pb.RankRequest) -> pb.RankResponse:
        s = self.served
        cands = rank_candidates(request.candidate_item_ids, request.bids, s.bundle.item_index)
        history = await self._history(s, request.user_id)
        cold = len(history) == 0
        if len(cands.items) == 0:
            probs = np.zeros(0)
        elif cold:
            probs = s.pop_share[cands.items]
        else:
            got = await self._call(self.ranker.score_items, s.ref, history, cands.items)
            probs = np.asarray(got["probs"], np.float64)
        ev, order = expected_value_order(probs, cands.bids, cands.positions)
        return responses.rank_response(s, cands, probs, ev, order, cold)

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

        items, _ = await self._ruled(s, rules, int(request.k), len(idx), fetch, exclude=[item])
        return responses.similar_response(s, items, own_scores(items, idx, sims))

    async def _profile(self, request: pb.GetUserProfileRequest) -> pb.UserProfile:
        s = self.served
        pseudonym = s.bundle.pseudonymise(request.user_id)
        if pseudonym in self.erased:
            raise NotFound("user_id: no profile (this person was erased)")
        full = await self._history(s, request.user_id)  # the bundle's history and the events logged since
        history = full.items
        with self._feedback_lock:
            counts = self.feedback.counts_by_event(pseudonym)
        profile = pb.UserProfile(known=len(history) > 0, history_length=len(history), feedback_counts=counts,
                                 bundle_version=str(s.bundle.version))
        terms = pb.WeightedTerm
        profile.top_categories.extend(terms(name=n, weight=w) for n, w in s.catalog.top_categories(history))
        profile.top_brands.extend(terms(name=n, weight=w) for n, w in s.catalog.top_brands(history))
        profile.keywords.extend(terms(name=n, weight=w) for n, w in s.catalog.keywords(history))
        if len(history):
            pref = await self._call(self.ranker.preference, s.ref, full)
            profile.preference.CopyFrom(pb.PreferenceSummary(
                dim=pref["dim"], norm=pref["norm"], top_item_ids=[s.item_ids[int(j)] for j in pref["top"]]))
        return profile

    async def _record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        from prefmine.feedback import FeedbackEvent, IdempotencyConflict

        s = self.served
        events = [FeedbackEvent(user=s.bundle.pseudonymise(ev.user_id), item=ev.item_id,
                                event=EVENT_NAMES[ev.type], ts=int(ev.timestamp),
                                rating=float(ev.rating) if ev.type == pb.EVENT_TYPE_RATE else None,
                                impression_id=ev.impression_id or None)  # validated: [A-Za-z0-9-]{1,64}
                  for ev in request.events]
        for n, e in enumerate(events):
            if e.user in self.erased:
                raise Erased(f"events[{n}].user_id: this person was erased; no feedback is stored for them")

        def append() -> int:
            with self._feedback_lock:
                try:
                    return self.feedback.append(events, idempotency_key=request.idempotency_key or None)
                except IdempotencyConflict as e:
                    raise BadRequest(str(e)) from e

        # shielded: once the write has started, a client that goes away does not cancel it half-way (the
        # transaction commits or rolls back as a whole either way; the answer is then simply not delivered)
        last = await asyncio.shield(asyncio.to_thread(append))
        self.metrics.feedback_stored(events)
        if self.experiment is not None:  # events answering an impression, by their user's arm
            self.metrics.arm_feedback(self.experiment.name, [(arm_of(self.experiment, e.user).name, e.event)
                                                             for e in events if e.impression_id])
        return pb.RecordFeedbackResponse(stored=len(events), last_id=last)

    async def _model_info(self) -> pb.ModelInfoResponse:
        s = self.served
        m: dict[str, Any] = dict(s.bundle.manifest)
        if s.ref not in self._dims:
            self._dims[s.ref] = int(await self._call(self.encoder.dim, s.ref))
        comps = responses.component_infos(m)
        gate = None
        for comp in comps:
            if comp.name == "policy":
                comp.attributes["serving"] = await self._call(self.ranker.policy_kind, s.ref)
                gate = responses.policy_gate(await self._call(self.ranker.policy_gate, s.ref))
        return pb.ModelInfoResponse(
            policy_gate=gate,
            bundle_version=str(s.bundle.version),
            components=comps,
            n_items=int(s.bundle.n_items),
            created=str(m.get("created", "")),
            data_hash=str(m.get("data_hash", "")),
            embedding_dim=self._dims[s.ref],
        )
