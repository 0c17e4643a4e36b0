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

The RPCs' work lives in groups, each a mixin over serve/rpc_common.py's `IngressParts`: serve/rpc_recommend.py
(Recommend and its impression log), serve/rpc_search.py (Search, SimilarItems, Rank), serve/rpc_user.py
(GetUserProfile, RecordFeedback), serve/rpc_ads.py (WriteCampaigns, Rank's ad auction, clicks that charge). This class holds the replica's state, the common path and the thin RPC methods.

A/B arms: with an ``experiment`` (prefmine.experiments, checked by prefmine.serving.arms), every Recommend is
served by its user's arm (a stable hash of the pseudonym): the arm's policy orders the slate, the answer and its
impression carry the arm's name, and per-arm counters count impressions, clicks and purchases (serve/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from prefmine.feedback.base import StoreUnavailable
from prefmine.serving import responses
from prefmine.serving.arms import servable_experiment
from prefmine.serving.recommend import DEFAULT_CANDIDATES
from prefmine.v1 import recommender_pb2 as pb
from serve.auth import ApiKeyCheck, AuthConfig, PermissionDenied, RateLimited, Unauthenticated
from serve.catalog_rpc import KnownItems, write_catalog
from serve.deployments.common import MAX_QUEUED, one_thread
from serve.metrics import ServiceMetrics
from serve.new_items import LiveItems
from serve.rpc_ads import AdServing, write_campaigns
from serve.rpc_common import REPLICA_RETRY_S, Erased, ImpressionNotLogged, NotFound
from serve.rpc_recommend import RULES_POLICY, RecommendRpcs
from serve.rpc_search import SEARCH_CANDIDATES, SearchRpcs
from serve.rpc_user import UserRpcs
from serve.served import BundleRef, ServedBundle, pinned_refs
from serve.validate import (
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

TOMBSTONE_CHECK_S = 2.0  # how often an ingress replica looks whether the tombstone list changed
__all__ = ["DEFAULT_CANDIDATES", "REPLICA_RETRY_S", "RULES_POLICY", "SEARCH_CANDIDATES", "TOMBSTONE_CHECK_S",
           "Erased", "ImpressionNotLogged", "NotFound", "RecommenderIngress"]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_constructor_retry_count=3,
                  max_queued_requests=MAX_QUEUED["RecommenderIngress"])
class RecommenderIngress(RecommendRpcs, SearchRpcs, UserRpcs):
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
        ads: dict | None = None,
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
        # the versions A/B arms pin (serve.app.arm_versions), by location, each with its own new-item view
        self.pinned: dict[str, ServedBundle] = {}
        self.pinned_items: dict[str, LiveItems] = {}
        self.ads = AdServing(ads)  # Rank's ad auction on the store's shared ledger (serve/rpc_ads.py)

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
        await self._pin(pinned_refs(config))
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

    async def _pin(self, refs) -> None:
        """Hold the versions A/B arms pin (loaded once; what the config no longer pins is let go). A version that
        does not load fails a fresh replica, as the served one does; a running one logs it and keeps what it holds."""
        wanted = {r.path: r for r in refs}
        unheld = sorted({a.bundle for a in (self.experiment.arms if self.experiment else ()) if a.bundle} - set(wanted))
        if unheld:  # `serve deploy` with a user_config that does not list them: those arms get the served version
            logger.error("A/B arms pin %s, but the deployments' user_config does not list them under 'pinned': "
                         "those arms are answered by the served version", unheld)
        for path in [p for p, s in self.pinned.items() if wanted.get(p) != s.ref]:
            self.pinned.pop(path)
            self.pinned_items.pop(path, None)
        for path, ref in wanted.items():
            if path in self.pinned:
                continue
            try:
                self.pinned[path] = await asyncio.to_thread(ServedBundle, ref)
            except Exception as e:  # noqa: BLE001 - as reconfigure: refused and reported while something serves
                if self.served is None:
                    raise
                logger.error("arm bundle %s (%s) did not load: %s: %s", ref.version, path, type(e).__name__, e)
                continue
            self.pinned_items[path] = LiveItems(self.ranker, self.encoder, self._call, self.live_catalog.config)
            logger.info("holding bundle %s for an A/B arm (%s)", ref.version, path)

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
        """Client-supplied candidates by expected value (next-interaction probability x bid); sponsored ones
        (with a campaign) through the ad auction on the shared budget ledger."""
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

    async def WriteCampaigns(self, request, grpc_context) -> pb.WriteCampaignsResponse:
        """Stores advertisers' campaigns durably in the shared store (serve/rpc_ads.py) before answering."""
        return await self._serve("WriteCampaigns", request, grpc_context, pb.WriteCampaignsResponse, None,
                                 self._write_campaigns)

    async def _write_campaigns(self, request: pb.WriteCampaignsRequest) -> pb.WriteCampaignsResponse:
        def write() -> pb.WriteCampaignsResponse:
            with self._feedback_lock:
                return write_campaigns(self.feedback, request)

        return await asyncio.shield(asyncio.to_thread(write))

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
