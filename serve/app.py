"""The Ray Serve application: encoder, ranker and policy deployments behind a gRPC ingress.

Graph (each box a separate deployment, composed with DeploymentHandles)::

    gRPC proxy -> RecommenderIngress --handle--> RankerDeployment   (user state + top-N candidates)
                                     --handle--> PolicyDeployment   (orders a slate of k from the candidates)
                                     --handle--> EncoderDeployment  (text embeddings; ModelInfo's dim)

The ingress answers the RPCs of ``prefmine.v1.Recommender`` (protos/prefmine/v1/recommender.proto): its methods
are named like the RPCs and take ``(request, grpc_context)``. It pseudonymises the raw user id with the bundle's
key, looks up the user's history in the bundle's catalogue, and never lets an exception escape (Ray would send
INTERNAL with a traceback): bad input -> INVALID_ARGUMENT naming the field, anything else -> INTERNAL with a
short message, both with an empty response.

``build_app({"bundle": PATH})`` is the application builder used by ``serve/run.py`` and ``serve/config.yaml``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from prefmine.v1 import recommender_pb2 as pb

logger = logging.getLogger("ray.serve")

K_MAX = 1000
MAX_EXCLUDE = 10_000
DEFAULT_CANDIDATES = 100
APP_NAME = "prefmine"
GRPC_SERVICER = "prefmine.v1.recommender_pb2_grpc.add_RecommenderServicer_to_server"


class BadRequest(ValueError):
    """A request field is invalid; the message names the field."""


def _one_thread() -> None:
    """One intra-op thread per replica (2-core machines slow down ~30x with oversubscription)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def validate_request(request: pb.RecommendRequest) -> None:
    """Raise BadRequest naming the field when a RecommendRequest is invalid."""
    if not request.user_id.strip():
        raise BadRequest("user_id must be a non-empty string")
    if not 1 <= request.k <= K_MAX:
        raise BadRequest(f"k must be in 1..{K_MAX}, got {request.k}")
    if len(request.exclude_item_ids) > MAX_EXCLUDE:
        raise BadRequest(
            f"exclude_item_ids has {len(request.exclude_item_ids)} entries, at most {MAX_EXCLUDE}"
        )


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

    def dim(self) -> int:
        return int(self.runtime.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.runtime.embed(list(texts))


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
    """gRPC ingress for prefmine.v1.Recommender (methods named like the RPCs)."""

    def __init__(
        self,
        bundle: str,
        ranker: DeploymentHandle,
        policy: DeploymentHandle,
        encoder: DeploymentHandle,
        candidates: int = DEFAULT_CANDIDATES,
    ):
        _one_thread()
        from prefmine.bundle import Bundle

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
        self._dim: int | None = None

    # -- RPCs -----------------------------------------------------------------------------------------------
    async def Recommend(self, request: pb.RecommendRequest, grpc_context) -> pb.RecommendResponse:
        """Ordered slate of up to k items for the (raw) user id; cold start from popularity."""
        t0 = time.perf_counter()
        try:
            validate_request(request)
            resp = await self._recommend(request)
            logger.debug(
                "Recommend k=%d cold=%s %.1f ms", request.k, resp.cold_start, 1e3 * (time.perf_counter() - t0)
            )
            return resp
        except BadRequest as e:
            return self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(e), pb.RecommendResponse())
        except Exception:  # noqa: BLE001 - never let Ray turn it into INTERNAL + traceback
            logger.exception("Recommend failed")
            return self._fail(
                grpc_context, grpc.StatusCode.INTERNAL, "internal error in Recommend", pb.RecommendResponse()
            )

    async def ModelInfo(self, request: pb.ModelInfoRequest, grpc_context) -> pb.ModelInfoResponse:
        """Versions of the served bundle and its components."""
        try:
            return await self._model_info()
        except Exception:  # noqa: BLE001
            logger.exception("ModelInfo failed")
            return self._fail(
                grpc_context, grpc.StatusCode.INTERNAL, "internal error in ModelInfo", pb.ModelInfoResponse()
            )

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

    async def _recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        k = int(request.k)
        exclude = self._exclude_set(request.exclude_item_ids)
        history = np.asarray(self.bundle.history(self.bundle.pseudonymise(request.user_id)), dtype=np.int64)
        if len(history) == 0:
            items, scores = self._popular(k, exclude)
            return self._response(items, scores, cold_start=True)
        exclude |= set(history.tolist())
        n = min(max(k, self.n_candidates), self.bundle.n_items - len(exclude))
        if n <= 0:
            return self._response(np.zeros(0, np.int64), np.zeros(0), cold_start=False)
        cand = await self.ranker.candidates.remote(history, n, exclude)
        slate = await self.policy.select.remote(cand["state"], cand["idx"], cand["scores"], k)
        by_item = dict(zip(cand["idx"].tolist(), cand["scores"].tolist()))
        relevance = np.asarray([by_item[int(i)] for i in slate], dtype=np.float64)
        return self._response(np.asarray(slate, np.int64), slate_scores(relevance), cold_start=False)

    def _popular(self, k: int, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        order = self.pop_order
        if exclude:
            order = order[~np.isin(order, np.fromiter(exclude, dtype=np.int64))]
        items = order[:k]
        return items, self.pop_scores[items]

    def _response(self, items: np.ndarray, scores: np.ndarray, cold_start: bool) -> pb.RecommendResponse:
        return pb.RecommendResponse(
            items=[
                pb.RecommendedItem(item_id=self.item_ids[int(i)], score=float(s), title=self.titles[int(i)])
                for i, s in zip(items, scores)
            ],
            bundle_version=str(self.bundle.version),
            cold_start=cold_start,
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


BUILD_ARGS = {"bundle", "candidates"}
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
    """Application builder: ``{"bundle": PATH, "candidates": N (optional, default 100)}``.

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
    b = str(bundle)
    return RecommenderIngress.bind(
        b,
        RankerDeployment.bind(b),
        PolicyDeployment.bind(b),
        EncoderDeployment.bind(b),
        candidates=candidates,
    )
