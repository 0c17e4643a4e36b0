"""The slate policy of one bundle version as serving uses it: a learned policy (prefmine.policy.runtime) when the
bundle has ``policy/`` and its gate (``policy/gate.json``, prefmine.policy.gate) let it win, the heuristic the gate
chose when the learned policy did not beat it, else the ranker's order (greedy). A learned answer is cleaned (only
distinct candidates) and padded from the ranker's order, and each slot carries its propensity for the impression
log (1.0 for the deterministic orders).

A caller may ask for another policy than the version's own (an A/B arm's, prefmine.experiments): ``learned`` or
one of the gate's heuristics (``SERVABLE_POLICIES``). A heuristic is computed like the gate's, ``mix`` at the
gate's tuned weight; ``learned`` on a version without a learned policy serves the version's own policy, and the
label logged with the impression always names what actually ordered the slate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prefmine.policy.gate import HEURISTICS, GateDecision, heuristic_slate

# the logger a Serve replica writes to its log file (the deployments log under the same name)
logger = logging.getLogger("ray.serve")

SERVABLE_POLICIES = ("learned", *HEURISTICS)  # what a caller (an A/B arm) may ask `PolicyVersion.select` for
DEFAULT_MIX_ALPHA = 0.5  # `mix` on a version whose gate tuned no weight (no gate.json, or no policy/)


class PolicyVersion:
    """The policy of one bundle directory (None: greedy, nothing loaded). A bundle without ``policy/`` is served
    greedy, logged; a ``policy/`` that does not load raises, so the version is refused like a broken ranker, and
    so does a gate.json that does not parse. Without gate.json (a bundle made before the gate) the learned policy
    is served; with one, `gate.served`: the learned policy, or a heuristic (``kind`` is then its name)."""

    def __init__(self, bundle: str | None):
        self.runtime = None
        self.kind = "greedy"
        self.gate: GateDecision | None = None
        self.bundle = None if bundle is None else Path(bundle)
        self._log_pop: np.ndarray | None = None  # log(1 + popularity), loaded when a heuristic first needs it
        self._heuristic = False  # the version's own policy is a heuristic the gate chose
        if bundle is None:
            return
        pol_dir = Path(bundle) / "policy"
        if not pol_dir.exists():
            logger.warning("bundle %s has no policy/; using the ranker's order", bundle)
            return
        from prefmine.policy.runtime import PolicyRuntime

        self.runtime = PolicyRuntime(bundle)  # a policy that does not load is an error: the version is refused
        self.kind = "learned"
        self.gate = GateDecision.load(pol_dir)  # None: made before the gate, the learned policy as before
        if self.gate is not None and not self.gate.uses_learned:
            self.kind = self.gate.served
            self._heuristic = True
            self._log_pop = np.log1p(_popularity(Path(bundle)))
            logger.info("bundle %s serves the %s heuristic: %s", bundle, self.kind, self.gate.reason)

    @property
    def label(self) -> str:
        """The policy as logged with an impression: its kind, and its exploration rate when it explores."""
        return self.label_for(None)

    def resolve(self, policy: str | None) -> str:
        """The policy that orders a slate when `policy` is asked for (None: the version's own). ``learned`` on a
        version without a learned policy is the version's own; a name outside SERVABLE_POLICIES is a ValueError."""
        if policy is None or policy == self.kind:
            return self.kind
        if policy not in SERVABLE_POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(SERVABLE_POLICIES)}")
        if policy == "learned" and self.runtime is None:
            return self.kind
        return policy

    def label_for(self, policy: str | None) -> str:
        """`label` of the policy that `policy` resolves to (see `resolve`)."""
        kind = self.resolve(policy)
        if kind != "learned":
            return kind  # a heuristic or the ranker's order: deterministic, no exploration
        eps = float(getattr(self.runtime, "epsilon", 0.0) or 0.0)
        return f"{kind} epsilon={eps:g}" if eps > 0 else kind

    def _popularity_log(self) -> np.ndarray:
        if self._log_pop is None:
            if self.bundle is None:
                raise ValueError("a popularity heuristic needs a bundle's item popularity")
            self._log_pop = np.log1p(_popularity(self.bundle))
        return self._log_pop

    def select(self, state: np.ndarray, candidates: np.ndarray, scores: np.ndarray, k: int,
               return_propensities: bool = False, policy: str | None = None):
        """An ordered slate of min(k, len(candidates)) distinct candidate item indices; with
        return_propensities, also each slot's probability of its item given the slots before it (the learned
        policy's own, exploration included; 1.0 where the choice is deterministic: the ranker's order, and the
        ranker's padding after a policy answer that had to be cleaned). ``policy``: another policy than the
        version's own (`resolve`)."""
        kind = self.resolve(policy)
        candidates = np.asarray(candidates, dtype=np.int64)
        k = min(int(k), len(candidates))

        def out(slate, props=None):
            slate = np.asarray(slate, dtype=np.int64)
            if not return_propensities:
                return slate
            return slate, (np.ones(len(slate)) if props is None else np.asarray(props, dtype=np.float64))

        if k == 0:
            return out(candidates[:0])
        if kind == "greedy" and not self._heuristic:
            return out(greedy_order(candidates, scores)[:k])
        if kind != "learned":  # a heuristic (the gate's choice, or asked for): its deterministic order
            log_pop = self._popularity_log()
            pos = np.argsort(-np.asarray(scores), kind="stable")  # ranker order first, so ties keep it
            order = np.asarray(candidates)[pos]  # = greedy_order(candidates, scores), sorted once
            pop = log_pop[np.clip(order, 0, len(log_pop) - 1)] * (order < len(log_pop))
            alpha = self.gate.alpha if self.gate is not None else DEFAULT_MIX_ALPHA
            return out(heuristic_slate(kind, order, np.asarray(scores)[pos], pop, k, alpha))
        if return_propensities:
            slate, got = self.runtime.select(state, candidates, scores, k, return_propensities=True)
        else:
            slate, got = self.runtime.select(state, candidates, scores, k), None
        slate = np.asarray(slate, dtype=np.int64)
        got = np.ones(len(slate)) if got is None else np.asarray(got, dtype=np.float64)
        clean, props = clean_slate(slate, got, candidates)
        if len(clean) == k:
            return out(clean, props)
        logger.warning("policy returned %d valid of %d items; padding from the ranker", len(clean), k)
        seen = set(clean)
        rest = [int(i) for i in greedy_order(candidates, scores) if int(i) not in seen][:k - len(clean)]
        return out(clean + rest, props + [1.0] * len(rest))


def _popularity(bundle: Path) -> np.ndarray:
    """Train interaction counts per item: the policy's own copy (what the gate was evaluated with), else the
    catalogue's."""
    for path in (bundle / "policy" / "item_popularity.npy", bundle / "catalog" / "popularity.npy"):
        if path.is_file():
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    raise FileNotFoundError(f"bundle {bundle}: its gate serves a heuristic but it has no item popularity")


def greedy_order(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidates by descending ranker score, ties in their given order."""
    return np.asarray(candidates)[np.argsort(-np.asarray(scores), kind="stable")]


def clean_slate(slate, propensities, candidates) -> tuple[list[int], list[float]]:
    """A policy's answer with what a slate may not hold dropped: items that are not candidates and repeats (the
    first occurrence kept, with its propensity)."""
    allowed = set(np.asarray(candidates).tolist())
    clean: list[int] = []
    props: list[float] = []
    seen: set[int] = set()
    for i, p in zip(map(int, slate), propensities):
        if i in allowed and i not in seen:
            clean.append(i)
            props.append(float(p))
            seen.add(i)
    return clean, props
