"""The Ray Serve application: encoder, ranker and policy deployments behind a gRPC ingress.

Graph (each box a separate deployment, composed with DeploymentHandles)::

    gRPC proxy -> RecommenderIngress --handle--> RankerDeployment   (user state + top-N candidates; Recommend's
                                                                      slate, by the policy it also holds)
                                     --handle--> PolicyDeployment   (the policy's kind for ModelInfo)
                                     --handle--> EncoderDeployment  (text embeddings; ModelInfo's dim)

The ingress answers the RPCs of ``prefmine.v1.Recommender`` (protos/prefmine/v1/recommender.proto) and the
standard ``grpc.health.v1.Health/Check``: its methods are named like the RPCs and take ``(request,
grpc_context)``. Every call goes through ``_serve``: API key from the metadata, its scope and its rate limit
first, before any other work (serve/auth.py; not for health), then a request the proxy could not parse
(serve/wire.py's ``Malformed``), field validation (serve/validate.py), then the work; its status code and time go
to the Prometheus metrics (serve/metrics.py). It pseudonymises the raw user id with the bundle's key, looks up
the user's history in the bundle's catalogue, and never lets an exception escape (Ray would send INTERNAL with a
traceback): UNAUTHENTICATED, PERMISSION_DENIED (scope), INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED
(size, rate limit, a full queue), NOT_FOUND, or INTERNAL with a short message, each with an empty response.
Every deployment has a ``check_health`` that fails while it holds no loaded bundle version, and a bounded queue
(``MAX_QUEUED``). RecordFeedback appends to the feedback log (prefmine.feedback: SQLite WAL, or PostgreSQL for
several nodes; durable commits) with the request's idempotency key, and answers only after the commit returned.
Recommend logs its answer as an impression in the same store (id, pseudonym, items, propensities, policy,
bundle version) before answering with the id; if that append fails it answers UNAVAILABLE.

The hot path: Recommend is one hop from the ingress, ``RankerDeployment.slate``: the ranker batches concurrent
users (``@serve.batch``) and then orders each slate with the same bundle version's policy, loaded in the ranker
replica too (``_PolicyVersion.select``; PolicyDeployment still answers ModelInfo's policy kind). A second
hop to PolicyDeployment cost ~5 ms a request at c=1 and a third of the throughput at c=8-32 on 2 cores
(bench.serve_latency). A call whose replica died is retried
(``RecommenderIngress._call``), so losing a replica costs latency, not failed requests. The bundle version is
every deployment's ``user_config``: a new version is rolled in by a lightweight update, each request answered
by one version end to end (serve/served.py).

``build_app({"bundle": PATH, ...})`` is the application builder used by ``serve/run.py`` and
``serve/config.yaml``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from prefmine.feedback.base import StoreUnavailable
from prefmine.serving import ranking, responses
from prefmine.serving.policy import PolicyVersion as _PolicyVersion
from prefmine.serving.rank import expected_value_order, rank_candidates
from prefmine.serving.ranking import candidates_for
from prefmine.serving.search import blend, search_order
from prefmine.serving.slate import logged_propensities, slate_relevance, slate_scores
from prefmine.serving.vectors import nearest_rows, unit_rows
from prefmine.v1 import recommender_pb2 as pb
from serve.auth import ApiKeyCheck, AuthConfig, PermissionDenied, RateLimited, Unauthenticated
from serve.metrics import ServiceMetrics
from serve.served import BundleRef, RuntimeCache, ServedBundle, adopt
from serve.validate import (
    EVENT_NAMES,
    K_MAX,
    MAX_EXCLUDE,
    BadRequest,
    validate_feedback,
    validate_profile,
    validate_rank,
    validate_request,
    validate_search,
    validate_similar,
)
from serve.wire import SERVICE, SERVICER_FUNCTION, Malformed

logger = logging.getLogger("ray.serve")

DEFAULT_CANDIDATES = 100
RANKER_BATCH = 16  # users per batched ranker call (max_ongoing_requests of the ranker is >= this)
# requests each caller (proxy or handle) queues for a deployment beyond its replicas' max_ongoing_requests; more
# are refused at once (RESOURCE_EXHAUSTED) instead of piling up in memory behind a slow or flooded deployment
MAX_QUEUED = {"RecommenderIngress": 256, "RankerDeployment": 256, "PolicyDeployment": 64, "EncoderDeployment": 64}
RANKER_BATCH_WAIT_S = 0.0  # no wait for company: under load the queue fills batches anyway (bench.serve_latency)
REPLICA_RETRY_S = 20.0  # how long the ingress retries a call whose replica died (ranker, policy, encoder)
SEARCH_CANDIDATES = 100
APP_NAME = "prefmine"
GRPC_SERVICER = SERVICER_FUNCTION  # serve.wire.add_services: Recommender + Health, lenient request parsing
__all__ = ["K_MAX", "MAX_EXCLUDE", "BadRequest", "validate_request", "build_app"]


class ImpressionNotLogged(RuntimeError):
    """The impression log did not take a Recommend answer: nothing is shown that was not logged (UNAVAILABLE)."""


class Erased(Exception):
    """The request names a person who was erased (on the tombstone list): answered FAILED_PRECONDITION."""


class NotFound(LookupError):
    """The subject of a call (SimilarItems' item) is unknown; the message names the field."""


def _one_thread() -> None:
    """One intra-op thread per replica (2-core machines slow down ~30x with oversubscription)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3,
    max_queued_requests=MAX_QUEUED["EncoderDeployment"],
)
class EncoderDeployment:
    """Text encoder (prefmine.text.runtime.EncoderRuntime) per bundle version: embeds texts, gives the dim."""

    def __init__(self):
        _one_thread()
        self.runtimes = RuntimeCache(_EncoderVersion)

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

    async def search(self, ref: BundleRef, query: str, n: int) -> dict[str, np.ndarray]:
        """The n items whose text embedding is closest (cosine) to the query's: Search's text retrieval."""
        enc = await self.runtimes.get(ref)
        return nearest_rows(enc.unit_items, np.asarray(enc.runtime.embed([query]), dtype=np.float32)[0], n)


class _EncoderVersion:
    def __init__(self, bundle: str):
        from prefmine.text.runtime import EncoderRuntime

        self.runtime = EncoderRuntime(bundle)
        self.unit_items = unit_rows(self.runtime.item_embeddings)


def require_loaded(*caches: RuntimeCache) -> None:
    """A deployment's ``check_health``: raise unless each cache holds a loaded bundle version (a replica that
    holds none cannot answer a single call)."""
    for cache in caches:
        if not cache.versions():
            raise RuntimeError("no bundle version is loaded")


# max_ongoing_requests 64 (> RANKER_BATCH): its calls include the slate selection, and at 16 the ingress's router
# queued the rest of a 32-client load and backed off (figures in bench/README.md, serving latency)
@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_constructor_retry_count=3,
    max_queued_requests=MAX_QUEUED["RankerDeployment"],
)
class RankerDeployment:
    """Sequential ranker (prefmine.ranker.runtime.RankerRuntime) per bundle version: user state, top-N
    candidates, item scores, similar items."""

    def __init__(self):
        _one_thread()
        self.runtimes = RuntimeCache(_RankerVersion)
        self.policies = RuntimeCache(_PolicyVersion)  # the hot path's slate selection (``slate``)

    async def reconfigure(self, config: dict) -> None:
        """A new bundle version (rollout): load it now (ranker and policy), beside the one being served
        (serve.served.adopt)."""
        await adopt(config, self.runtimes, self.policies)

    async def check_health(self) -> None:
        """Serve's periodic probe: unhealthy (and replaced) while no ranker and policy version is loaded."""
        require_loaded(self.runtimes, self.policies)

    async def prepare(self, ref: BundleRef) -> str:
        """Load ``ref`` if not yet held (raises if it does not load): the ingress's check before it switches."""
        await self.runtimes.get(ref)
        await self.policies.get(ref)
        return ref.version

    async def slate(self, ref: BundleRef, history: np.ndarray, n: int, exclude: set[int], k: int) -> dict:
        """Recommend's hot path in one call: ``candidates`` (batched), then the policy's slate of k from them,
        selected here by the same bundle version's policy (``_PolicyVersion.select``) rather than one more actor
        hop. Returns the candidates' ``idx``/``scores``, the ordered ``slate``, each slot's ``propensities`` (what
        the impression log needs) and the ``policy`` that chose it."""
        cand = await self.candidates(ref, history, n, exclude)
        return await self._select(ref, cand, k)

    async def slate_unbatched(self, ref: BundleRef, history: np.ndarray, n: int, exclude: set[int], k: int) -> dict:
        """``slate`` without @serve.batch (the benchmarks' in-process graph)."""
        cand = await self.candidates_unbatched(ref, history, n, exclude)
        return await self._select(ref, cand, k)

    async def _select(self, ref: BundleRef, cand: dict, k: int) -> dict:
        policy = await self.policies.get(ref)
        slate, props = policy.select(cand["state"], cand["idx"], cand["scores"], k, return_propensities=True)
        return {"idx": cand["idx"], "scores": cand["scores"], "slate": slate, "propensities": props,
                "policy": policy.label}

    async def candidates(self, ref: BundleRef, history: np.ndarray, n: int, exclude: set[int]) -> dict:
        """Top-n item indices (and scores) not in exclude, plus the user state, for one history.

        Concurrent calls are batched (``@serve.batch``): one forward pass and one scoring matmul for up to
        ``RANKER_BATCH`` users, which is where the ranker's time goes under load.
        """
        return await self._candidates_batch((ref, np.asarray(history, dtype=np.int64), int(n), set(exclude)))

    async def candidates_unbatched(self, ref: BundleRef, history: np.ndarray, n: int, exclude: set[int]) -> dict:
        """``candidates`` without @serve.batch, which needs a Serve replica (the benchmarks' in-process graph)."""
        runtime = (await self.runtimes.get(ref)).runtime
        return candidates_for(runtime, [np.asarray(history, dtype=np.int64)], [int(n)], [set(exclude)])[0]

    @serve.batch(max_batch_size=RANKER_BATCH, batch_wait_timeout_s=RANKER_BATCH_WAIT_S)
    async def _candidates_batch(self, calls: list[tuple[BundleRef, np.ndarray, int, set[int]]]) -> list[dict]:
        out: list[dict | None] = [None] * len(calls)
        for ref in dict.fromkeys(c[0] for c in calls):  # during a rollout a batch may hold two versions
            rows = [j for j, c in enumerate(calls) if c[0] == ref]
            runtime = (await self.runtimes.get(ref)).runtime
            got = candidates_for(runtime, [calls[j][1] for j in rows], [calls[j][2] for j in rows],
                                 [calls[j][3] for j in rows])
            for j, answer in zip(rows, got):
                out[j] = answer
        return out

    async def score_items(self, ref: BundleRef, history: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Relevance of given items for one history, and the probability the next interaction is each of them
        (softmax of the relevance over the whole catalogue: what the ranker's cross-entropy trains)."""
        runtime = (await self.runtimes.get(ref)).runtime
        return ranking.item_scores(runtime.scores([np.asarray(history, dtype=np.int64)])[0], items)

    async def similar(self, ref: BundleRef, item: int, k: int) -> dict[str, np.ndarray]:
        """The k items whose ranker vectors are closest (cosine) to one item's, the item itself left out."""
        return ranking.similar_items((await self.runtimes.get(ref)).unit_vectors(), item, k)

    async def explain(self, ref: BundleRef, history: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """For each recommended item, the history item with the most similar ranker vector, and the similarity."""
        src, sims = ranking.nearest_sources((await self.runtimes.get(ref)).runtime.item_vectors, history, items)
        return {"source": src, "sims": sims}

    async def preference(self, ref: BundleRef, history: np.ndarray, top: int = 5) -> dict[str, Any]:
        """The user's state vector summarised: dim, L2 norm, the top items it scores highest."""
        runtime = (await self.runtimes.get(ref)).runtime
        state = runtime.user_states([np.asarray(history, dtype=np.int64)])[0]
        return ranking.preference(state, runtime.item_vectors, top)


class _RankerVersion:
    def __init__(self, bundle: str):
        from prefmine.ranker.runtime import RankerRuntime

        self.runtime = RankerRuntime(bundle)
        self._unit: np.ndarray | None = None

    def unit_vectors(self) -> np.ndarray:
        if self._unit is None:
            self._unit = unit_rows(self.runtime.item_vectors)
        return self._unit


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3,
    max_queued_requests=MAX_QUEUED["PolicyDeployment"],
)
class PolicyDeployment:
    """Slate policy (prefmine.policy.runtime.PolicyRuntime) per bundle version: orders k items out of the
    ranker's candidates. A bundle without policy/ is served in the ranker's order (greedy), logged; a policy/
    that does not load refuses the version, like a broken ranker (serve.served.adopt)."""

    def __init__(self):
        _one_thread()
        self.runtimes = RuntimeCache(_PolicyVersion)

    async def reconfigure(self, config: dict) -> None:
        """A new bundle version (rollout): load it now, beside the one being served (serve.served.adopt)."""
        await adopt(config, self.runtimes)

    async def check_health(self) -> None:
        """Serve's periodic probe: unhealthy (and replaced) while no bundle version is loaded."""
        require_loaded(self.runtimes)

    async def prepare(self, ref: BundleRef) -> str:
        """Load ``ref`` if not yet held: the ingress's check before it switches."""
        await self.runtimes.get(ref)
        return ref.version

    async def info(self, ref: BundleRef) -> str:
        return (await self.runtimes.get(ref)).kind


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_constructor_retry_count=3,
                  max_queued_requests=MAX_QUEUED["RecommenderIngress"])
class RecommenderIngress:
    """gRPC ingress for prefmine.v1.Recommender and grpc.health.v1.Health (methods named like the RPCs)."""

    def __init__(
        self,
        ranker: DeploymentHandle,
        policy: DeploymentHandle,
        encoder: DeploymentHandle,
        candidates: int = DEFAULT_CANDIDATES,
        feedback_db: str | None = None,
        auth: dict | None = None,
        tls: dict | None = None,
        tombstones: str | None = None,
    ):
        _one_thread()
        from prefmine.feedback import open_feedback_store
        from serve.tls import TlsConfig, install_direct_ingress_tls

        tls_config = TlsConfig(**(tls or {}))
        if tls_config.enabled:  # before Serve starts this replica's direct-ingress gRPC server (if on)
            install_direct_ingress_tls(tls_config)

        self.ranker, self.policy, self.encoder = ranker, policy, encoder
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
        self._feedback_lock = threading.Lock()  # one sqlite3 connection, used from worker threads

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
        worker thread while the current version keeps answering, then swapped in at once, after the ranker,
        policy and encoder have each loaded it too (``prepare``). A request already running finishes on the
        version it started with. A version that does not load in some part is refused and logged, and the
        current one keeps serving (ModelInfo still reports it; serve.run.rollout then rolls the config back)."""
        ref = BundleRef.of(config)
        if self.served is not None and self.served.ref == ref:
            return
        try:
            new = await asyncio.to_thread(ServedBundle, ref)
            if self.served is not None:  # a rollout: switch only once every part holds the new version
                await asyncio.gather(*(self._call(part.prepare, ref)
                                       for part in (self.ranker, self.policy, self.encoder)))
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
    def _history(self, s: ServedBundle, user_id: str, recent_events=()) -> np.ndarray:
        """The user's history, empty for an erased person (answered like an unknown user without recent events)."""
        if s.bundle.pseudonymise(user_id) in self.erased:
            return np.zeros(0, dtype=np.int64)
        return s.history(user_id, recent_events)

    @staticmethod
    def _fail(grpc_context, code: grpc.StatusCode, details: str, empty):
        if grpc_context is not None:
            grpc_context.set_code(code)
            grpc_context.set_details(details)
        return empty

    async def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        s = self.served
        k = int(request.k)
        exclude = s.exclude_set(request.exclude_item_ids)
        history = self._history(s, request.user_id, request.recent_events)
        if len(history) == 0:
            items, scores = s.popular(k, exclude)
            resp = responses.recommend_response(s, items, scores, cold_start=True, placement=request.placement)
            if request.explain:
                for it, i in zip(resp.items, items):
                    it.reason = s.catalog.reason(int(i), None, None, s.pop_scores[int(i)])
            return await self._log_impression(s, request, resp, np.ones(len(resp.items)), "popularity")
        exclude |= set(history.tolist())
        n = min(max(k, self.n_candidates), s.bundle.n_items - len(exclude))
        if n <= 0:
            resp = responses.recommend_response(s, np.zeros(0, np.int64), np.zeros(0), cold_start=False,
                                                placement=request.placement)
            return await self._log_impression(s, request, resp, np.zeros(0), "none")
        # one hop: the ranker replica also selects the slate with the same version's policy (RankerDeployment.slate)
        cand = await self._call(self.ranker.slate, s.ref, history, n, exclude, k)
        slate = np.asarray(cand["slate"], np.int64)
        relevance = slate_relevance(cand["idx"], cand["scores"], slate)
        resp = responses.recommend_response(s, slate, slate_scores(relevance), cold_start=False,
                                            placement=request.placement)
        if request.explain and len(slate):
            why = await self._call(self.ranker.explain, s.ref, history, slate)
            for it, i, src, sim in zip(resp.items, slate, why["source"], why["sims"]):
                it.reason = s.catalog.reason(int(i), int(src), float(sim), None)
        return await self._log_impression(s, request, resp, cand["propensities"], cand["policy"])

    async def _log_impression(self, s: ServedBundle, request: pb.RecommendRequest, resp: pb.RecommendResponse,
                              propensities, policy: str) -> pb.RecommendResponse:
        """Log what `resp` shows under a new impression id (uuid4), durably, and only then return it carrying
        the id and each item's propensity. A failed append raises ImpressionNotLogged (UNAVAILABLE): an answer
        is never shown unlogged. The append is shielded like RecordFeedback's: a client that goes away does not
        cancel it half-way (an impression may then be logged that nobody saw, never the reverse)."""
        from prefmine.feedback import Impression

        props = logged_propensities(propensities)
        user = s.bundle.pseudonymise(request.user_id)
        if user in self.erased:  # nothing new is stored about an erased person: the impression stays anonymous
            user = ""
        imp = Impression(impression_id=str(uuid.uuid4()), user=user,
                         ts=int(time.time()), items=[it.item_id for it in resp.items],
                         positions=list(range(len(resp.items))), propensities=props, policy=str(policy),
                         bundle_version=resp.bundle_version)

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
        return resp

    async def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        s = self.served
        k = int(request.k)
        hits = await self._call(self.encoder.search, s.ref, request.query, max(k, SEARCH_CANDIDATES))
        idx = hits["idx"]
        history = self._history(s, request.user_id)
        cold = len(history) == 0
        relevance = None if cold else (await self._call(self.ranker.score_items, s.ref, history, idx))["scores"]
        final, relevance = blend(hits["sims"], relevance)
        return responses.search_response(s, idx, final, np.asarray(hits["sims"], np.float64), relevance,
                                         search_order(final, k), cold)

    async def _rank(self, request: pb.RankRequest) -> pb.RankResponse:
        s = self.served
        cands = rank_candidates(request.candidate_item_ids, request.bids, s.bundle.item_index)
        history = self._history(s, request.user_id)
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
        s = self.served
        i = s.bundle.item_index(request.item_id)
        if i is None:
            raise NotFound(f"item_id {request.item_id[:64]!r} is not in the catalogue")
        got = await self._call(self.ranker.similar, s.ref, int(i), int(request.k))
        return responses.similar_response(s, got["idx"], got["sims"])

    async def _profile(self, request: pb.GetUserProfileRequest) -> pb.UserProfile:
        s = self.served
        pseudonym = s.bundle.pseudonymise(request.user_id)
        if pseudonym in self.erased:
            raise NotFound("user_id: no profile (this person was erased)")
        history = s.history(request.user_id)
        with self._feedback_lock:
            counts = self.feedback.counts_by_event(pseudonym)
        profile = pb.UserProfile(known=len(history) > 0, history_length=len(history), feedback_counts=counts,
                                 bundle_version=str(s.bundle.version))
        terms = pb.WeightedTerm
        profile.top_categories.extend(terms(name=n, weight=w) for n, w in s.catalog.top_categories(history))
        profile.top_brands.extend(terms(name=n, weight=w) for n, w in s.catalog.top_brands(history))
        profile.keywords.extend(terms(name=n, weight=w) for n, w in s.catalog.keywords(history))
        if len(history):
            pref = await self._call(self.ranker.preference, s.ref, history)
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
        return pb.RecordFeedbackResponse(stored=len(events), last_id=last)

    async def _model_info(self) -> pb.ModelInfoResponse:
        s = self.served
        m: dict[str, Any] = dict(s.bundle.manifest)
        if s.ref not in self._dims:
            self._dims[s.ref] = int(await self._call(self.encoder.dim, s.ref))
        comps = responses.component_infos(m)
        for comp in comps:
            if comp.name == "policy":
                comp.attributes["serving"] = await self._call(self.policy.info, s.ref)
        return pb.ModelInfoResponse(
            bundle_version=str(s.bundle.version),
            components=comps,
            n_items=int(s.bundle.n_items),
            created=str(m.get("created", "")),
            data_hash=str(m.get("data_hash", "")),
            embedding_dim=self._dims[s.ref],
        )



def default_feedback_db(bundle: str | Path) -> str:
    """Where feedback goes when no path is configured: $PREFMINE_FEEDBACK_DB, else feedback.sqlite beside the
    bundle directory (shared by the bundle versions rolled in there, so a rollout keeps the log)."""
    return os.environ.get("PREFMINE_FEEDBACK_DB") or str(Path(bundle).resolve().parent / "feedback.sqlite")


def code_version() -> str:
    """A hash of the serving code (serve/ and prefmine/ sources): the deployments' code version."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted([*root.joinpath("serve").rglob("*.py"), *root.joinpath("prefmine").rglob("*.py")]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _same_code(deployment):
    """The deployment with the serving code's hash as its version. `serve.run` gives every deployment a random
    code version otherwise, so redeploying for a new bundle (serve.run.rollout) would restart every replica;
    with it, only the user_config changes and Serve reconfigures the running replicas in place. ``version`` is
    an internal option of Deployment.options in this Ray (ray 2.60), hence ``_internal``."""
    return deployment.options(version=code_version(), _internal=True)


# no per-request access log line ("CALL ... OK") from every replica: written, tailed and streamed to the driver for
# each hop, it cost ~2-4 ms a request on 2 cores (bench.serve_latency); errors and warnings are still logged
LOGGING = {"enable_access_log": False}
BUILD_ARGS = {"bundle", "candidates", "feedback_db", "api_keys_file", "require_api_key", "rate_limit", "rate_burst",
              "tls", "extra_keys", "tombstones"}
TOMBSTONE_CHECK_S = 2.0  # how often an ingress replica looks whether the tombstone list changed
REQUIRED_PARTS = ("manifest.json", "catalog", "encoder", "ranker")  # policy/ is optional (greedy fallback)


def check_bundle(bundle: Path) -> None:
    """Fail fast, naming what is missing, before any replica tries (and retries) to load the bundle."""
    if not bundle.is_dir():
        raise FileNotFoundError(f"bundle: {bundle} is not a directory")
    missing = [part for part in REQUIRED_PARTS if not (bundle / part).exists()]
    if missing:
        raise FileNotFoundError(f"bundle: {bundle} lacks {', '.join(missing)} (not a finished model bundle)")
    from prefmine.integrity import verify

    verify(bundle)  # every file as the manifest lists it (and signed, when the server holds a bundle key)
    check_pseudonym_key(bundle)


def check_pseudonym_key(bundle: Path) -> None:
    """Refuse to serve with another pseudonymisation key than the data was prepared with: every user would
    silently look unknown and get cold-start answers."""
    from prefmine.bundle import read_manifest
    from prefmine.data.privacy import DEMO_FINGERPRINT, key_fingerprint, load_key

    expected = read_manifest(bundle).get("dataset", {}).get("pseudonymisation", {}).get("key_fingerprint")
    actual = key_fingerprint(load_key(allow_demo=expected == DEMO_FINGERPRINT))
    if expected and expected != actual:
        raise ValueError(f"PREFMINE_PSEUDONYM_KEY: its fingerprint {actual} differs from the key the bundle's data "
                         f"was prepared with ({expected}); set the same key for serving")


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder. Args:

    ``bundle`` (required): model bundle directory; ``candidates``: ranker candidates the policy chooses from
    (default 100); ``feedback_db``: SQLite file or postgresql:// DSN RecordFeedback appends to (default:
    ``default_feedback_db``);
    ``api_keys_file``: the server's hashed API keys (serve/auth.py; required unless ``require_api_key: false``,
    which turns authentication off: demo only); ``rate_limit``/``rate_burst``: each key's requests a second and
    burst per ingress replica (0: no limit); ``extra_keys``: key-file lines accepted besides the file's
    (``prefmine serve``'s own probe key); ``tls``: ``{cert_file, key_file, client_ca_file}`` for the
    direct-ingress gRPC server (serve/tls.py); ``tombstones``: the list of erased pseudonyms
    (prefmine/data/tombstones.py) each ingress replica re-reads when it changes (default: $PREFMINE_TOMBSTONES,
    else beside a SQLite feedback db).

    Used by ``serve.run(build_app({...}))`` and by ``serve deploy serve/config.yaml`` (import_path
    ``serve.app:build_app``). Unknown keys are an error.
    """
    unknown = set(args) - BUILD_ARGS
    if unknown:
        raise ValueError(f"unknown application args: {sorted(unknown)} (allowed: {sorted(BUILD_ARGS)})")
    if "bundle" not in args:
        raise ValueError("application args: 'bundle' (path of a model bundle dir) is required")
    bundle = Path(str(args["bundle"])).expanduser().resolve()
    check_bundle(bundle)
    candidates = int(args.get("candidates", DEFAULT_CANDIDATES))
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    require = args.get("require_api_key", True)
    if not isinstance(require, bool):
        raise ValueError(f"require_api_key must be true or false, got {require!r}")
    keys_file = args.get("api_keys_file")
    keys_file = str(Path(str(keys_file)).expanduser().resolve()) if keys_file else None
    auth = AuthConfig(keys_file=keys_file, required=require,
                      rate_per_s=float(args.get("rate_limit", AuthConfig.rate_per_s)),
                      burst=int(args.get("rate_burst", AuthConfig.burst)),
                      extra_keys=tuple(args.get("extra_keys") or ()))
    if auth.required:
        from serve.auth import load_keys

        load_keys(auth.keys_file)  # fail here, naming the file and line, rather than in every ingress replica
    from prefmine.feedback import resolve_location
    from serve.tls import TlsConfig

    tls = TlsConfig(**(args.get("tls") or {}))  # checked here too: missing files named before any replica starts
    feedback_db = resolve_location(args.get("feedback_db") or default_feedback_db(bundle))  # a path or a DSN
    from prefmine.data.tombstones import resolve as resolve_tombstones

    tombstones = resolve_tombstones(args.get("tombstones"), feedback_db)
    # the bundle version travels as user_config, not as constructor args: a new one is a lightweight update that
    # every replica takes in `reconfigure` without restarting (serve/served.py: the zero-downtime rollout)
    version = BundleRef.of({"bundle": str(bundle)}).config()

    def versioned(deployment):
        return _same_code(deployment.options(user_config=version, logging_config=LOGGING))

    return versioned(RecommenderIngress).bind(
        versioned(RankerDeployment).bind(),
        versioned(PolicyDeployment).bind(),
        versioned(EncoderDeployment).bind(),
        candidates=candidates,
        feedback_db=feedback_db,
        tombstones=str(tombstones) if tombstones else None,
        auth={"keys_file": auth.keys_file, "required": auth.required, "rate_per_s": auth.rate_per_s,
              "burst": auth.burst, "extra_keys": list(auth.extra_keys)},
        tls=tls.as_dict(),
    )
