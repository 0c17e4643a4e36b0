"""The Ray Serve application: encoder, ranker and policy deployments behind a gRPC ingress.

Graph (each box a separate deployment, composed with DeploymentHandles)::

    gRPC proxy -> RecommenderIngress --handle--> RankerDeployment   (user state + top-N candidates)
                                     --handle--> PolicyDeployment   (orders a slate of k from the candidates)
                                     --handle--> EncoderDeployment  (text embeddings; ModelInfo's dim)

The ingress answers the RPCs of ``prefmine.v1.Recommender`` (protos/prefmine/v1/recommender.proto) and the
standard ``grpc.health.v1.Health/Check``: its methods are named like the RPCs and take ``(request,
grpc_context)``. Every call goes through ``_serve``: API key from the metadata (serve/auth.py; not for health),
a request the proxy could not parse (serve/wire.py's ``Malformed``), field validation (serve/validate.py), then
the work. It pseudonymises the raw user id with the bundle's key, looks up the user's history in the bundle's
catalogue, and never lets an exception escape (Ray would send INTERNAL with a traceback): UNAUTHENTICATED,
INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED, NOT_FOUND, or INTERNAL with a short message, each with
an empty response. RecordFeedback appends to the feedback log (prefmine.feedback.FeedbackLog: SQLite WAL,
synchronous=FULL) and answers only after the commit returned.

``build_app({"bundle": PATH, ...})`` is the application builder used by ``serve/run.py`` and
``serve/config.yaml``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.handle import DeploymentHandle

from prefmine.v1 import recommender_pb2 as pb
from serve.auth import ApiKeyCheck, AuthConfig, Unauthenticated
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
SEARCH_CANDIDATES = 100
APP_NAME = "prefmine"
GRPC_SERVICER = SERVICER_FUNCTION  # serve.wire.add_services: Recommender + Health, lenient request parsing
__all__ = ["K_MAX", "MAX_EXCLUDE", "BadRequest", "validate_request", "build_app"]


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


def slate_scores(relevance: np.ndarray) -> np.ndarray:
    """Scores for a slate in the policy's order: the slate's relevance scores sorted descending.

    The policy may promote an item above a higher-scored one; the response promises non-increasing scores, so
    position i carries the i-th highest relevance within the slate (identical to the relevance when the policy
    keeps the ranker's order).
    """
    return np.sort(np.asarray(relevance, dtype=np.float64))[::-1]


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3
)
class EncoderDeployment:
    """Text encoder (prefmine.text.runtime.EncoderRuntime): embeds texts; gives the embedding dim."""

    def __init__(self, bundle: str):
        _one_thread()
        from prefmine.text.runtime import EncoderRuntime

        self.runtime = EncoderRuntime(bundle)
        self._unit_items: np.ndarray | None = None

    def dim(self) -> int:
        return int(self.runtime.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.runtime.embed(list(texts))

    def search(self, query: str, n: int) -> dict[str, np.ndarray]:
        """The n items whose text embedding is closest (cosine) to the query's: Search's text retrieval."""
        if self._unit_items is None:
            v = np.asarray(self.runtime.item_embeddings, dtype=np.float32)
            self._unit_items = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        q = np.asarray(self.runtime.embed([query]), dtype=np.float32)[0]
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        sims = self._unit_items @ q
        n = min(int(n), len(sims))
        idx = np.argpartition(-sims, n - 1)[:n]
        idx = idx[np.lexsort((idx, -sims[idx]))]
        return {"idx": idx.astype(np.int64), "sims": sims[idx].astype(np.float32)}


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3
)
class RankerDeployment:
    """Sequential ranker (prefmine.ranker.runtime.RankerRuntime): user state and top-N candidates."""

    def __init__(self, bundle: str):
        _one_thread()
        from prefmine.ranker.runtime import RankerRuntime

        self.runtime = RankerRuntime(bundle)

    def candidates(self, history: np.ndarray, n: int, exclude: set[int]) -> dict[str, np.ndarray]:
        """Top-n item indices (and scores) not in exclude, plus the user state, for one history."""
        history = np.asarray(history, dtype=np.int64)
        idx, scores, states = self.runtime.top_n_with_states([history], n, [set(exclude)])
        state = states[0]
        idx, scores = np.asarray(idx[0], dtype=np.int64), np.asarray(scores[0], dtype=np.float32)
        keep = np.isfinite(scores) & (idx >= 0)
        return {"idx": idx[keep], "scores": scores[keep], "state": np.asarray(state, dtype=np.float32)}

    def score_items(self, history: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Relevance of given items for one history, and the probability the next interaction is each of them
        (softmax of the relevance over the whole catalogue: what the ranker's cross-entropy trains)."""
        scores = self.runtime.scores([np.asarray(history, dtype=np.int64)])[0].astype(np.float64)
        logz = scores.max() + np.log(np.exp(scores - scores.max()).sum())
        items = np.asarray(items, dtype=np.int64)
        return {"scores": scores[items].astype(np.float32), "probs": np.exp(scores[items] - logz)}

    def similar(self, item: int, k: int) -> dict[str, np.ndarray]:
        """The k items whose ranker vectors are closest (cosine) to one item's, the item itself left out."""
        v = self._unit_vectors()
        sims = v @ v[int(item)]
        sims[int(item)] = -np.inf
        k = min(int(k), len(sims) - 1)
        if k <= 0:
            return {"idx": np.zeros(0, np.int64), "sims": np.zeros(0, np.float32)}
        idx = np.argpartition(-sims, k - 1)[:k]
        idx = idx[np.lexsort((idx, -sims[idx]))]
        return {"idx": idx.astype(np.int64), "sims": sims[idx].astype(np.float32)}

    def explain(self, history: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """For each recommended item, the history item with the most similar ranker vector, and the similarity."""
        from serve.profile import nearest_sources

        src, sims = nearest_sources(self.runtime.item_vectors, history, items)
        return {"source": src, "sims": sims}

    def preference(self, history: np.ndarray, top: int = 5) -> dict[str, Any]:
        """The user's state vector summarised: dim, L2 norm, the top items it scores highest."""
        state = self.runtime.user_states([np.asarray(history, dtype=np.int64)])[0]
        scores = state @ self.runtime.item_vectors.T
        top_idx = np.argsort(-scores, kind="stable")[:top]
        return {"dim": int(state.shape[0]), "norm": float(np.linalg.norm(state)), "top": top_idx.astype(np.int64)}

    def _unit_vectors(self) -> np.ndarray:
        if getattr(self, "_unit", None) is None:
            v = np.asarray(self.runtime.item_vectors, dtype=np.float32)
            self._unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return self._unit


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, max_constructor_retry_count=3
)
class PolicyDeployment:
    """Slate policy (prefmine.policy.runtime.PolicyRuntime): orders k items out of the ranker's candidates.

    A bundle without a usable policy falls back to the ranker's order (greedy), logged once at start.
    """

    def __init__(self, bundle: str):
        _one_thread()
        self.runtime = None
        self.kind = "greedy"
        try:
            from prefmine.policy.runtime import PolicyRuntime

            self.runtime = PolicyRuntime(bundle)
            self.kind = "learned"
        except Exception as e:  # noqa: BLE001 - fall back, but say so
            logger.warning("policy unavailable (%s: %s); using the ranker's order", type(e).__name__, e)

    def info(self) -> str:
        return self.kind

    def select(self, state: np.ndarray, candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """An ordered slate of min(k, len(candidates)) distinct candidate item indices."""
        candidates = np.asarray(candidates, dtype=np.int64)
        k = min(int(k), len(candidates))
        if k == 0:
            return candidates[:0]
        if self.runtime is not None:
            slate = np.asarray(self.runtime.select(state, candidates, scores, k), dtype=np.int64)
            allowed = set(candidates.tolist())
            clean: list[int] = []
            seen: set[int] = set()
            for i in map(int, slate):
                if i in allowed and i not in seen:
                    clean.append(i)
                    seen.add(i)
            if len(clean) == k:
                return np.asarray(clean, dtype=np.int64)
            logger.warning("policy returned %d valid of %d items; padding from the ranker", len(clean), k)
            greedy = candidates[np.argsort(-np.asarray(scores), kind="stable")]
            rest = [int(i) for i in greedy if int(i) not in seen]
            return np.asarray((clean + rest)[:k], dtype=np.int64)
        return candidates[np.argsort(-np.asarray(scores), kind="stable")[:k]]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_constructor_retry_count=3)
class RecommenderIngress:
    """gRPC ingress for prefmine.v1.Recommender and grpc.health.v1.Health (methods named like the RPCs)."""

    def __init__(
        self,
        bundle: str,
        ranker: DeploymentHandle,
        policy: DeploymentHandle,
        encoder: DeploymentHandle,
        candidates: int = DEFAULT_CANDIDATES,
        feedback_db: str | None = None,
        auth: dict | None = None,
    ):
        _one_thread()
        from prefmine.bundle import Bundle
        from prefmine.feedback import FeedbackLog
        from serve.profile import CatalogText

        self.bundle = Bundle.load(bundle)
        if not getattr(self.bundle, "key_matches", True):
            logger.warning(
                "PREFMINE_PSEUDONYM_KEY differs from the key the bundle's data was prepared with: "
                "every user will look unknown (cold start)"
            )
        self.ranker, self.policy, self.encoder = ranker, policy, encoder
        self.n_candidates = int(candidates)
        self.titles = [str(t) if t is not None else "" for t in self.bundle.titles]
        self.item_ids = [str(i) for i in self.bundle.item_ids]
        pop = np.asarray(self.bundle.popularity, dtype=np.float64)
        self.pop_order = np.argsort(-pop, kind="stable")
        self.pop_scores = pop
        self.pop_share = pop / pop.sum() if pop.sum() > 0 else np.full(len(pop), 1.0 / max(1, len(pop)))
        self.catalog = CatalogText(self.bundle.items)
        self._dim: int | None = None
        self.auth = ApiKeyCheck(AuthConfig(**(auth or {"required": False})))
        if not self.auth.required:
            logger.warning("API-key authentication is OFF (demo mode): every caller is accepted")
        self.feedback = FeedbackLog(feedback_db or default_feedback_db(bundle))
        self._feedback_lock = threading.Lock()  # one sqlite3 connection, used from worker threads

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
        try:
            self.auth.check(grpc_context.invocation_metadata() if grpc_context is not None else ())
            if isinstance(request, Malformed):
                return self._fail(grpc_context, request.status, request.message, empty_cls())
            if validate is not None:
                validate(request)
            resp = await work(request)
            logger.debug("%s %.1f ms", rpc, 1e3 * (time.perf_counter() - t0))
            return resp
        except Unauthenticated as e:
            return self._fail(grpc_context, grpc.StatusCode.UNAUTHENTICATED, str(e), empty_cls())
        except BadRequest as e:
            return self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(e), empty_cls())
        except NotFound as e:
            return self._fail(grpc_context, grpc.StatusCode.NOT_FOUND, str(e), empty_cls())
        except asyncio.CancelledError:  # the client went away (deadline, cancel): stop, answer nothing
            raise
        except Exception:  # noqa: BLE001 - never let Ray turn it into INTERNAL + traceback
            logger.exception("%s failed", rpc)
            return self._fail(grpc_context, grpc.StatusCode.INTERNAL, f"internal error in {rpc}", empty_cls())

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def _fail(grpc_context, code: grpc.StatusCode, details: str, empty):
        if grpc_context is not None:
            grpc_context.set_code(code)
            grpc_context.set_details(details)
        return empty

    def _exclude_set(self, raw_ids) -> set[int]:
        out = set()
        for raw in raw_ids:
            i = self.bundle.item_index(raw)
            if i is not None:
                out.add(int(i))
        return out

    def _history(self, user_id: str, recent_events=()) -> np.ndarray:
        """The user's history in the bundle, then the known items of recent_events in timestamp order."""
        history = np.asarray(self.bundle.history(self.bundle.pseudonymise(user_id)), dtype=np.int64)
        if not recent_events:
            return history
        recent = sorted(((ev.timestamp, n, self.bundle.item_index(ev.item_id)) for n, ev in enumerate(recent_events)))
        extra = [int(i) for _, _, i in recent if i is not None]
        return np.concatenate([history, np.asarray(extra, dtype=np.int64)]) if extra else history

    async def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        k = int(request.k)
        exclude = self._exclude_set(request.exclude_item_ids)
        history = self._history(request.user_id, request.recent_events)
        if len(history) == 0:
            items, scores = self._popular(k, exclude)
            resp = self._response(items, scores, cold_start=True, placement=request.placement)
            if request.explain:
                for it, i in zip(resp.items, items):
                    it.reason = self.catalog.reason(int(i), None, None, self.pop_scores[int(i)])
            return resp
        exclude |= set(history.tolist())
        n = min(max(k, self.n_candidates), self.bundle.n_items - len(exclude))
        if n <= 0:
            return self._response(np.zeros(0, np.int64), np.zeros(0), cold_start=False, placement=request.placement)
        cand = await self.ranker.candidates.remote(history, n, exclude)
        slate = await self.policy.select.remote(cand["state"], cand["idx"], cand["scores"], k)
        by_item = dict(zip(cand["idx"].tolist(), cand["scores"].tolist()))
        relevance = np.asarray([by_item[int(i)] for i in slate], dtype=np.float64)
        slate = np.asarray(slate, np.int64)
        resp = self._response(slate, slate_scores(relevance), cold_start=False, placement=request.placement)
        if request.explain and len(slate):
            why = await self.ranker.explain.remote(history, slate)
            for it, i, src, sim in zip(resp.items, slate, why["source"], why["sims"]):
                it.reason = self.catalog.reason(int(i), int(src), float(sim), None)
        return resp

    async def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        k = int(request.k)
        hits = await self.encoder.search.remote(request.query, max(k, SEARCH_CANDIDATES))
        idx, text = hits["idx"], hits["sims"].astype(np.float64)
        history = self._history(request.user_id)
        cold = len(history) == 0
        if cold:
            relevance = np.zeros(len(idx))
            final = text
        else:
            relevance = np.asarray((await self.ranker.score_items.remote(history, idx))["scores"], np.float64)
            final = 0.5 * _z(text) + 0.5 * _z(relevance)
        order = np.lexsort((np.arange(len(idx)), -final))[:k]
        return pb.SearchResponse(
            results=[pb.SearchResult(item_id=self.item_ids[int(idx[j])], score=float(final[j]),
                                     text_score=float(text[j]), relevance=float(relevance[j]),
                                     title=self.titles[int(idx[j])]) for j in order],
            bundle_version=str(self.bundle.version), cold_start=cold)

    async def _rank(self, request: pb.RankRequest) -> pb.RankResponse:
        bids = list(request.bids) or [1.0] * len(request.candidate_item_ids)
        known: dict[int, tuple[int, str, float]] = {}  # item index -> (request position, raw id, bid)
        unknown: list[str] = []
        for pos, (raw, bid) in enumerate(zip(request.candidate_item_ids, bids)):
            i = self.bundle.item_index(raw)
            if i is None:
                unknown.append(raw)
            elif int(i) not in known:  # duplicates are ranked once, with their first bid
                known[int(i)] = (pos, raw, float(bid))
        history = self._history(request.user_id)
        cold = len(history) == 0
        items = np.fromiter(known, dtype=np.int64, count=len(known))
        if len(items) == 0:
            probs = np.zeros(0)
        elif cold:
            probs = self.pop_share[items]
        else:
            probs = np.asarray((await self.ranker.score_items.remote(history, items))["probs"], np.float64)
        pos = np.asarray([known[int(i)][0] for i in items])
        bid = np.asarray([known[int(i)][2] for i in items])
        ev = probs * bid
        order = np.lexsort((pos, -ev))
        return pb.RankResponse(
            items=[pb.RankedItem(item_id=known[int(items[j])][1], click_probability=float(probs[j]),
                                 bid=float(bid[j]), expected_value=float(ev[j])) for j in order],
            unknown_item_ids=unknown, bundle_version=str(self.bundle.version), cold_start=cold)

    async def _similar(self, request: pb.SimilarItemsRequest) -> pb.SimilarItemsResponse:
        i = self.bundle.item_index(request.item_id)
        if i is None:
            raise NotFound(f"item_id {request.item_id[:64]!r} is not in the catalogue")
        got = await self.ranker.similar.remote(int(i), int(request.k))
        return pb.SimilarItemsResponse(
            items=[pb.SimilarItem(item_id=self.item_ids[int(j)], similarity=float(s), title=self.titles[int(j)])
                   for j, s in zip(got["idx"], got["sims"])],
            bundle_version=str(self.bundle.version))

    async def _profile(self, request: pb.GetUserProfileRequest) -> pb.UserProfile:
        pseudonym = self.bundle.pseudonymise(request.user_id)
        history = self._history(request.user_id)
        with self._feedback_lock:
            counts = self.feedback.counts_by_event(pseudonym)
        profile = pb.UserProfile(known=len(history) > 0, history_length=len(history), feedback_counts=counts,
                                 bundle_version=str(self.bundle.version))
        terms = pb.WeightedTerm
        profile.top_categories.extend(terms(name=n, weight=w) for n, w in self.catalog.top_categories(history))
        profile.top_brands.extend(terms(name=n, weight=w) for n, w in self.catalog.top_brands(history))
        profile.keywords.extend(terms(name=n, weight=w) for n, w in self.catalog.keywords(history))
        if len(history):
            pref = await self.ranker.preference.remote(history)
            profile.preference.CopyFrom(pb.PreferenceSummary(
                dim=pref["dim"], norm=pref["norm"], top_item_ids=[self.item_ids[int(j)] for j in pref["top"]]))
        return profile

    async def _record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        from prefmine.feedback import FeedbackEvent

        events = [FeedbackEvent(user=self.bundle.pseudonymise(ev.user_id), item=ev.item_id,
                                event=EVENT_NAMES[ev.type], ts=int(ev.timestamp),
                                rating=float(ev.rating) if ev.type == pb.EVENT_TYPE_RATE else None)
                  for ev in request.events]

        def append() -> int:
            with self._feedback_lock:
                return self.feedback.append(events)

        # shielded: once the write has started, a client that goes away does not cancel it half-way (the
        # transaction commits or rolls back as a whole either way; the answer is then simply not delivered)
        last = await asyncio.shield(asyncio.to_thread(append))
        return pb.RecordFeedbackResponse(stored=len(events), last_id=last)

    def _popular(self, k: int, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        order = self.pop_order
        if exclude:
            order = order[~np.isin(order, np.fromiter(exclude, dtype=np.int64))]
        items = order[:k]
        return items, self.pop_scores[items]

    def _response(self, items: np.ndarray, scores: np.ndarray, cold_start: bool,
                  placement: str = "") -> pb.RecommendResponse:
        return pb.RecommendResponse(
            items=[
                pb.RecommendedItem(item_id=self.item_ids[int(i)], score=float(s), title=self.titles[int(i)])
                for i, s in zip(items, scores)
            ],
            bundle_version=str(self.bundle.version),
            cold_start=cold_start,
            placement=placement,
        )

    async def _model_info(self) -> pb.ModelInfoResponse:
        m: dict[str, Any] = dict(self.bundle.manifest)
        if self._dim is None:
            self._dim = int(await self.encoder.dim.remote())
        comps = []
        present = m.get("components") or {}
        known = [c for c in ("encoder", "ranker", "policy") if c in present]
        for name in known + sorted(set(present) - set(known)):
            spec = present[name]
            spec = spec if isinstance(spec, dict) else {"version": spec}
            version = str(spec.get("version", spec.get("kind", "")))
            attrs = {
                str(a): str(v)
                for a, v in spec.items()
                if a not in ("version",) and isinstance(v, (str, int, float, bool))
            }
            comps.append(pb.ComponentInfo(name=name, version=version, attributes=attrs))
        for comp in comps:
            if comp.name == "policy":
                comp.attributes["serving"] = await self.policy.info.remote()
        return pb.ModelInfoResponse(
            bundle_version=str(self.bundle.version),
            components=comps,
            n_items=int(self.bundle.n_items),
            created=str(m.get("created", "")),
            data_hash=str(m.get("data_hash", "")),
            embedding_dim=self._dim,
        )



def _z(x: np.ndarray) -> np.ndarray:
    """Standardised scores (0 when all are equal)."""
    sd = float(np.std(x))
    return (x - np.mean(x)) / sd if sd > 0 else np.zeros_like(x)


def default_feedback_db(bundle: str | Path) -> str:
    """Where feedback goes when no path is configured: $PREFMINE_FEEDBACK_DB, else feedback.sqlite beside the
    bundle directory (shared by the bundle versions rolled in there, so a rollout keeps the log)."""
    return os.environ.get("PREFMINE_FEEDBACK_DB") or str(Path(bundle).resolve().parent / "feedback.sqlite")


BUILD_ARGS = {"bundle", "candidates", "feedback_db", "api_keys_file", "require_api_key"}
REQUIRED_PARTS = ("manifest.json", "catalog", "encoder", "ranker")  # policy/ is optional (greedy fallback)


def check_bundle(bundle: Path) -> None:
    """Fail fast, naming what is missing, before any replica tries (and retries) to load the bundle."""
    if not bundle.is_dir():
        raise FileNotFoundError(f"bundle: {bundle} is not a directory")
    missing = [part for part in REQUIRED_PARTS if not (bundle / part).exists()]
    if missing:
        raise FileNotFoundError(f"bundle: {bundle} lacks {', '.join(missing)} (not a finished model bundle)")
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
    (default 100); ``feedback_db``: SQLite file RecordFeedback appends to (default: ``default_feedback_db``);
    ``api_keys_file``: the server's API keys, one per line (required unless ``require_api_key: false``, which
    turns authentication off: demo only).

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
    auth = AuthConfig(keys_file=keys_file, required=require)
    if auth.required:
        from serve.auth import load_keys

        load_keys(auth.keys_file)  # fail here, naming the file, rather than in every ingress replica
    feedback_db = str(Path(str(args.get("feedback_db") or default_feedback_db(bundle))).expanduser().resolve())
    b = str(bundle)
    return RecommenderIngress.bind(
        b,
        RankerDeployment.bind(b),
        PolicyDeployment.bind(b),
        EncoderDeployment.bind(b),
        candidates=candidates,
        feedback_db=feedback_db,
        auth={"keys_file": auth.keys_file, "required": auth.required},
    )
