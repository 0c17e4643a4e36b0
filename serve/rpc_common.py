"""What every RPC of the ingress shares (serve/ingress.py's RecommenderIngress is made of the RPC groups in
serve/rpc_*.py, each a mixin over `IngressParts`): the errors `_serve` maps to status codes, calls to the ranker and
encoder deployments that survive a lost replica, the user's history with the feedback logged since the bundle, and
request rules (prefmine.rules) with their candidate loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
import numpy as np

from prefmine.rules import Rules
from prefmine.serving.history import History, history_end, logged_events, with_session
from prefmine.serving.recommend import candidate_count
from prefmine.serving.request_rules import ruled_top, rules_of, unanswerable
from prefmine.v1 import recommender_pb2 as pb
from serve.live_catalog import poll
from serve.served import ServedBundle
from serve.validate import BadRequest

if TYPE_CHECKING:
    import threading

    from ray.serve.handle import DeploymentHandle

    from prefmine.data.tombstones import TombstoneWatcher
    from prefmine.feedback.base import FeedbackStore
    from prefmine.serving.live_catalog import LiveCatalog
    from serve.metrics import ServiceMetrics
    from serve.new_items import LiveItems
    from serve.rpc_ads import AdServing

logger = logging.getLogger("ray.serve")
REPLICA_RETRY_S = 20.0  # how long the ingress retries a call whose replica died (ranker, encoder)


class ImpressionNotLogged(RuntimeError):
    """The impression log did not take a Recommend answer: nothing is shown that was not logged (UNAVAILABLE)."""


class Erased(Exception):
    """The request names a person who was erased (on the tombstone list): answered FAILED_PRECONDITION."""


class NotFound(LookupError):
    """The subject of a call (SimilarItems' item) is unknown; the message names the field."""


class IngressParts:
    """The ingress replica's state the RPC groups use (set by RecommenderIngress.__init__) and their shared
    helpers."""

    ranker: DeploymentHandle
    encoder: DeploymentHandle
    n_candidates: int
    served: ServedBundle | None
    feedback: FeedbackStore
    erased: TombstoneWatcher
    metrics: ServiceMetrics
    live_catalog: LiveCatalog
    new_items: LiveItems
    pinned: dict[str, ServedBundle]  # versions A/B arms pin, by location, and their new-item views
    pinned_items: dict[str, LiveItems]
    ads: AdServing
    _feedback_lock: threading.Lock

    async def _live(self, pinned: str | None = None):
        """The served bundle (or the version an A/B arm pins, by its location) with the catalogue's new items
        appended (serve.new_items); the log polled when due."""
        await poll(self.live_catalog)
        if pinned is not None and pinned in self.pinned:
            return self.pinned_items[pinned].view(self.pinned[pinned], self.live_catalog)
        return self.new_items.view(self.served, self.live_catalog)

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


    @staticmethod
    def _rules(s: ServedBundle, msg: pb.Rules, exclude_seen: bool = True) -> Rules:
        """A validated Rules message as prefmine.rules.Rules; BadRequest when this catalogue cannot answer it."""
        why = unanswerable(s.attributes, msg)
        if why is not None:
            raise BadRequest(why)
        return rules_of(msg, exclude_seen)

    async def _ruled(self, s: ServedBundle, rules: Rules, k: int, available: int, fetch, history=(),
                     exclude=(), history_ts=(), now: float | None = None,
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """prefmine.serving.request_rules.ruled_top from Recommend's candidate count on, MMR's vectors from the
        ranker."""
        async def vectors_of(items):
            return await self._call(self.ranker.vectors, s.ref, items)

        return await ruled_top(s.attributes, rules, k, available, candidate_count(k, self.n_candidates, available, 0),
                               fetch, vectors_of, history, exclude, history_ts, now, allowed)
