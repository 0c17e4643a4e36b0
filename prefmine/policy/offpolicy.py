"""Off-policy estimates (IPS and SNIPS) of a policy's first-slot value on logged data, and their caveats.

The simulator's figures depend on the simulator. This is the check that uses the logs alone: each user's
held-out next interaction (history = train + valid, logged action a = the test item, reward r = 1 (the click)
+ purchase_value if the user rated it >= 4, the simulator's purchase definition). For a target policy pi that
picks the first slot from the ranker's top-N candidates of that history,

    w   = pi(a | x) / mu(a | x)
    IPS   = mean(w * r)                 unbiased IF mu is the true logging propensity and pi's support lies in mu's
    SNIPS = sum(w * r) / sum(w)         self-normalised: lower variance, biased, consistent

with 95% intervals from a bootstrap over users, the effective sample size (sum w)^2 / sum w^2 and the share
of logged actions inside pi's support (among the top-N candidates at all).

Caveats, all of which the report repeats (`CAVEATS`):
- The public logs record no propensities: nobody logged which recommender showed what with what probability.
  mu is ESTIMATED as the item's share of train interactions (a context-free popularity model of how users
  came to their items). IPS is unbiased only if that model is right, and it is not exactly right.
- Only positives are logged (a review is an interaction); there are no impressions without a click, hence no
  zero rewards. IPS therefore behaves like a popularity-debiased hit rate times the reward, and SNIPS's
  normalisation cancels the hit rate, leaving the purchase share among the events pi would have chosen:
  compare policies by IPS, read SNIPS as a purchase-quality figure only.
- Deterministic policies (greedy argmax) have support on one item per user; they are evaluated epsilon-greedy
  (`epsilon`, default 0.1) over the top-N, like serving with exploration on.
- Only the first slot of a session is evaluated (the logs hold no sessions with known slates); long-term
  effects that the simulator credits (fatigue, leaving) are invisible here.
- The ranker that proposes the candidates was trained on the same train interactions.

Serving with `PolicyRuntime(..., epsilon>0)` and `select(..., return_propensities=True)` produces the logged
propensities that make a real IPS possible on the platform's own feedback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prefmine.policy.simulator import ObsSpec, build_obs, top_candidates, unit_rows

CAVEATS = [
    "logging propensities are estimated (item share of train interactions), not logged: IPS is unbiased only "
    "if that model of the logging process is right",
    "only positive interactions are logged (no impressions, no zero rewards): compare policies by IPS (a "
    "debiased hit rate x reward); SNIPS cancels the hit rate and reads as the purchase share only",
    "deterministic policies are evaluated epsilon-greedy over the ranker's top-N (support)",
    "first slot only: fatigue and session-length effects are not seen by this estimate",
    "the ranker proposing the candidates was trained on the same train interactions",
]


def first_slot_probs(score_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None,
                     spec: ObsSpec, state: np.ndarray, items: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                     log_pop: np.ndarray, unit: np.ndarray, epsilon: float) -> np.ndarray:
    """pi(. | x) over the N candidate slots: epsilon-greedy around argmax of score_fn(obs, items, valid)
    (None: uniform over the valid slots, the random policy)."""
    n_valid = max(int(valid.sum()), 1)
    probs = np.where(valid, 1.0 / n_valid, 0.0)
    if score_fn is None:
        return probs
    obs = build_obs(spec, state, items, scores, valid, log_pop, unit, [], 0)
    s = np.where(valid, score_fn(obs, items, valid), -np.inf)
    greedy = np.zeros(len(items))
    greedy[int(np.argmax(s))] = 1.0
    return epsilon * probs + (1.0 - epsilon) * greedy


def off_policy_estimates(policies: dict, spec: ObsSpec, user_states: np.ndarray, histories: list[np.ndarray],
                         actions: np.ndarray, rewards: np.ndarray, item_vectors: np.ndarray,
                         item_popularity: np.ndarray, epsilon: float = 0.1, n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """IPS / SNIPS of each policy on logged (history, action, reward) triples.

    policies: {name: score_fn(obs, items, valid) -> [N] scores, or None for uniform random over the top-N}.
    user_states [U, d]: the ranker state of each history; actions [U]: logged item; rewards [U].
    item_popularity: train counts; mu(a) = (count(a) + 1) / sum(count + 1) (add-one so no item has mu = 0).
    """
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    unit = unit_rows(item_vectors)
    counts = np.asarray(item_popularity, dtype=np.float64)
    mu = (counts + 1.0) / (counts + 1.0).sum()
    log_pop = np.log1p(counts)
    rng = np.random.default_rng(seed)
    cand = []
    for state, hist in zip(user_states, histories):
        sc = item_vectors @ np.asarray(state, dtype=np.float32)
        blocked = np.zeros(len(item_vectors), dtype=bool)
        blocked[np.asarray(hist, dtype=np.int64)] = True
        pool = np.flatnonzero(~blocked)
        cand.append(top_candidates(pool, sc[pool], spec.n_candidates))
    n = len(actions)
    boot = rng.integers(0, n, size=(n_boot, n))
    out = {}
    for name, fn in policies.items():
        w = np.zeros(n)
        for u, (items, sc, valid) in enumerate(cand):
            hit = np.flatnonzero(valid & (items == actions[u]))
            if len(hit) == 0:
                continue
            p = first_slot_probs(fn, spec, user_states[u], items, sc, valid, log_pop, unit, epsilon)
            w[u] = p[hit[0]] / mu[actions[u]]
        wr = w * rewards
        ips_b = wr[boot].mean(axis=1)
        sw = w[boot].sum(axis=1)
        snips_b = np.where(sw > 0, wr[boot].sum(axis=1) / np.maximum(sw, 1e-300), np.nan)
        out[name] = {
            "ips": float(wr.mean()), "ips_ci95": [float(np.quantile(ips_b, 0.025)), float(np.quantile(ips_b, 0.975))],
            "snips": float(wr.sum() / w.sum()) if w.sum() > 0 else None,
            "snips_ci95": [float(np.nanquantile(snips_b, 0.025)), float(np.nanquantile(snips_b, 0.975))]
            if np.isfinite(snips_b).any() else None,
            "ess": float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0,
            "matched": int((w > 0).sum()),
        }
    support = float(np.mean([bool((valid & (items == a)).any()) for (items, _, valid), a in zip(cand, actions)]))
    return {"policies": out, "events": int(n), "epsilon": epsilon, "in_top_n_share": support,
            "propensity_model": "item share of train interactions (add-one)", "caveats": CAVEATS}
