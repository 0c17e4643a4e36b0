"""RankerDeployment: the bundle's sequential ranker and slate policy per version; Recommend's hot path."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from prefmine.serving import ranking
from prefmine.serving.history import History, as_history, ranker_inputs
from prefmine.serving.policy import PolicyVersion
from prefmine.serving.ranking import candidates_for
from prefmine.serving.vectors import unit_rows
from serve.deployments.common import MAX_QUEUED, one_thread, require_loaded
from serve.new_items import Extensions, digest_of, extended_policy
from serve.served import BundleRef, RuntimeCache, adopt

RANKER_BATCH = 16  # users per batched ranker call (max_ongoing_requests of the ranker is >= this)
RANKER_BATCH_WAIT_S = 0.0  # no wait for company: under load the queue fills batches anyway (bench.serve_latency)


# max_ongoing_requests 64 (> RANKER_BATCH): its calls include the slate selection, and at 16 the ingress's router
# queued the rest of a 32-client load and backed off (figures in bench/README.md, serving latency)
@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_constructor_retry_count=3,
    max_queued_requests=MAX_QUEUED["RankerDeployment"],
)
class RankerDeployment:
    """Sequential ranker (prefmine.ranker.runtime.RankerRuntime) and slate policy
    (prefmine.serving.policy.PolicyVersion) per bundle version: user state, top-N candidates, Recommend's slate,
    item scores, similar items, the preference summary, explanations, the policy's kind. A bundle without
    policy/ is served in the ranker's order (greedy), logged; a policy/ that does not load refuses the version,
    like a broken ranker (serve.served.adopt)."""

    def __init__(self):
        one_thread()
        self.runtimes = RuntimeCache(_RankerVersion)
        self.policies = RuntimeCache(PolicyVersion)  # the hot path's slate selection (``slate``)
        self.extended = Extensions()  # versions with new catalogue items appended (serve.new_items)

    async def _version(self, ref: BundleRef) -> _RankerVersion:
        """The ranker of ``ref``'s version, with the new catalogue items its ref carries."""
        return await self.extended.get(await self.runtimes.get(ref), ref, _RankerVersion.extended)

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

    async def slate(self, ref: BundleRef, history: History | np.ndarray, n: int, exclude: set[int], k: int,
                    policy: str | None = None) -> dict:
        """Recommend's hot path in one call: ``candidates`` (batched), then the policy's slate of k from them,
        selected here by the same bundle version's policy (``PolicyVersion.select``; ``policy``: another one, an
        A/B arm's) rather than one more actor hop. Returns the candidates' ``idx``/``scores``, the ordered
        ``slate``, each slot's ``propensities`` (what the impression log needs) and the ``policy`` that chose it."""
        cand = await self.candidates(ref, history, n, exclude)
        return await self._select(ref, cand, k, policy)

    async def slate_unbatched(self, ref: BundleRef, history: History | np.ndarray, n: int, exclude: set[int],
                              k: int, policy: str | None = None) -> dict:
        """``slate`` without @serve.batch (the benchmarks' in-process graph)."""
        cand = await self.candidates_unbatched(ref, history, n, exclude)
        return await self._select(ref, cand, k, policy)

    async def _select(self, ref: BundleRef, cand: dict, k: int, policy: str | None = None) -> dict:
        version = await self.extended.get(await self.policies.get(ref), ref, extended_policy)
        slate, props = version.select(cand["state"], cand["idx"], cand["scores"], k, return_propensities=True,
                                      policy=policy)
        return {"idx": cand["idx"], "scores": cand["scores"], "slate": slate, "propensities": props,
                "policy": version.label_for(policy)}

    async def policy_kind(self, ref: BundleRef) -> str:
        """The kind of policy this version's slates come from: ``learned``, ``greedy``, or the heuristic its gate
        chose (ModelInfo)."""
        return (await self.policies.get(ref)).kind

    async def policy_gate(self, ref: BundleRef) -> dict | None:
        """This version's policy gate decision as loaded (GateDecision.to_dict), None without one (ModelInfo)."""
        gate = (await self.policies.get(ref)).gate
        return gate.to_dict() if gate is not None else None

    async def candidates(self, ref: BundleRef, history: History | np.ndarray, n: int, exclude: set[int]) -> dict:
        """Top-n item indices (and scores) not in exclude, plus the user state, for one history.

        Concurrent calls are batched (``@serve.batch``): one forward pass and one scoring matmul for up to
        ``RANKER_BATCH`` users, which is where the ranker's time goes under load.
        """
        return await self._candidates_batch((ref, as_history(history), int(n), set(exclude)))

    async def candidates_unbatched(self, ref: BundleRef,
                                   history: History | np.ndarray, n: int, exclude: set[int]) -> dict:
        """``candidates`` without @serve.batch, which needs a Serve replica (the benchmarks' in-process graph)."""
        runtime = (await self._version(ref)).runtime
        return candidates_for(runtime, [as_history(history)], [int(n)], [set(exclude)])[0]

    @serve.batch(max_batch_size=RANKER_BATCH, batch_wait_timeout_s=RANKER_BATCH_WAIT_S)
    async def _candidates_batch(self, calls: list[tuple[BundleRef, History, int, set[int]]]) -> list[dict]:
        out: list[dict | None] = [None] * len(calls)
        # during a rollout a batch may hold two versions, and replicas' new items may differ for a moment
        for key in dict.fromkeys((c[0], digest_of(c[0])) for c in calls):
            rows = [j for j, c in enumerate(calls) if (c[0], digest_of(c[0])) == key]
            runtime = (await self._version(calls[rows[0]][0])).runtime
            got = candidates_for(runtime, [calls[j][1] for j in rows], [calls[j][2] for j in rows],
                                 [calls[j][3] for j in rows])
            for j, answer in zip(rows, got):
                out[j] = answer
        return out

    async def score_items(self, ref: BundleRef,
                          history: History | np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Relevance of given items for one history, and the probability the next interaction is each of them
        (softmax of the relevance over the whole catalogue: what the ranker's cross-entropy trains)."""
        runtime = (await self._version(ref)).runtime
        return ranking.item_scores(runtime.scores(**ranker_inputs([history]))[0], items)

    async def similar(self, ref: BundleRef, item: int, k: int) -> dict[str, np.ndarray]:
        """The k items whose ranker vectors are closest (cosine) to one item's, the item itself left out."""
        return ranking.similar_items((await self._version(ref)).unit_vectors(), item, k)

    async def vectors(self, ref: BundleRef, items: np.ndarray) -> np.ndarray:
        """The unit ranker vectors of given items (the rows MMR diversity of a request's rules compares)."""
        return (await self._version(ref)).unit_vectors()[np.asarray(items, dtype=np.int64)]

    async def explain(self, ref: BundleRef,
                      history: History | np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """For each recommended item, the history item with the most similar ranker vector, and the similarity."""
        src, sims = ranking.nearest_sources((await self._version(ref)).runtime.item_vectors,
                                            as_history(history).items, items)
        return {"source": src, "sims": sims}

    async def preference(self, ref: BundleRef, history: History | np.ndarray, top: int = 5) -> dict[str, Any]:
        """The user's state vector summarised: dim, L2 norm, the top items it scores highest."""
        runtime = (await self._version(ref)).runtime
        state = runtime.user_states(**ranker_inputs([history]))[0]
        return ranking.preference(state, runtime.item_vectors, top)


    async def cold_vectors(self, ref: BundleRef, text: np.ndarray) -> np.ndarray:
        """Ranker vectors of items the bundle does not hold, from their text embeddings (the fused ranker's
        cold-item path): what the ingress appends for new catalogue items (serve.new_items)."""
        return (await self.runtimes.get(ref)).runtime.cold_vectors(text)


class _RankerVersion:
    def __init__(self, bundle: str | None):
        from prefmine.ranker.runtime import RankerRuntime

        self.runtime = RankerRuntime(bundle) if bundle is not None else None
        self._unit: np.ndarray | None = None

    def extended(self, new) -> _RankerVersion:
        """This version with new catalogue items appended (prefmine.serving.new_items.NewItems)."""
        out = _RankerVersion(None)
        out.runtime = self.runtime.extended(new.vectors, new.text_vectors)
        return out

    def unit_vectors(self) -> np.ndarray:
        if self._unit is None:
            self._unit = unit_rows(self.runtime.item_vectors)
        return self._unit
