"""The update loop's guard: is a candidate version not worse than the serving one, judged on the SAME data?

Each version's own simulator figures are fitted to its own data and cannot be compared, so the guard evaluates
both versions on two things they share:

- logged impressions since the last round: each version's slate for the impression's user (its history as the
  serving catalogue plus the feedback before the impression) is compared slot by slot with what was shown; the
  per-slot value of each version's (deterministic) ranking is estimated with SNIPS and DR (a per-position click
  rate as the reward model) from the logged propensities (prefmine.policy.ope);
- held-out events: each user's last new interaction; NDCG@k and Recall@k of each version's slate for that user's
  history before it.

"Not worse" (`GuardRule`, `judge`): for every metric with at least `min_units` units (impressions, users), the
paired bootstrap interval of candidate - serving (resampling units, both versions on the same resample) has a
lower bound >= -tolerance of that family. Metrics with too few units are skipped and named; when every metric is
skipped the candidate is refused (no evidence is not evidence of "not worse").

A metric whose interval is wider than its tolerance (half-width > `decisive_factor` x tolerance) cannot show
"not worse" at that tolerance: a candidate exactly as good as the serving version passes it less than half the
time, so with few units every candidate that orders slates differently is refused, better ones included
(docs/update-loop.md has the figures of the closed-loop runs). Such an underpowered metric still refuses a candidate it shows worse (its
whole interval below 0), but does not decide "not worse"; that needs at least one metric with the units to decide,
and every such metric's low end >= -tolerance. `decisive_factor` 0: every metric decides (the rule before).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prefmine.config import ConfigError
from prefmine.feedback import Impression
from prefmine.policy.ope import OpeConfig, dr, snips

CLICKS = ("click", "cart", "buy")
OPE_METRICS = ("snips", "dr")
RANK_METRICS = ("ndcg", "recall")


@dataclass(frozen=True)
class GuardRule:
    """The rule's numbers (set from UpdateConfig's guard_* keys)."""

    ope_tolerance: float = 0.01  # absolute per-slot click rate the candidate may lose at the interval's edge
    rank_tolerance: float = 0.01  # absolute NDCG@k / Recall@k the candidate may lose at the interval's edge
    min_units: int = 20  # fewer impressions (users) than this: that family is skipped
    k: int = 10
    candidates: int = 100  # ranker top-n the slate is chosen from
    n_boot: int = 500
    seed: int = 0
    # a metric whose 95% half-width exceeds this many times its tolerance is underpowered: it only refuses a
    # candidate it shows worse (interval wholly below 0); 0: every metric decides not-worse at its tolerance
    decisive_factor: float = 1.0

    def __post_init__(self):
        if not float(self.decisive_factor) >= 0:
            raise ConfigError(f"update config key 'guard_decisive_factor': {self.decisive_factor!r}; a number >= 0")
        for name in ("ope_tolerance", "rank_tolerance"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"update config key 'guard_{name}': {getattr(self, name)!r}; a number >= 0")
        if int(self.min_units) < 2 or int(self.k) < 1 or int(self.candidates) < int(self.k):
            raise ConfigError("update config keys guard_min_units >= 2, guard_k >= 1, guard_candidates >= guard_k")


class VersionScorer:
    """One bundle version's slates: its ranker's top-n (history excluded) ordered by its policy, exploration off."""

    def __init__(self, bundle: str | Path, rule: GuardRule):
        from prefmine.ranker.runtime import RankerRuntime
        from prefmine.serving.policy import PolicyVersion

        self.ranker = RankerRuntime(bundle)
        self.policy = PolicyVersion(str(bundle))
        if self.policy.runtime is not None:
            self.policy.runtime.epsilon = 0.0  # the version's own choice, not its exploration: the same each call
        self.rule = rule

    def slates(self, histories: list[list[int]], k: int) -> list[list[int]]:
        n = min(self.rule.candidates, len(self.ranker.item_vectors))
        exclude = [list(h) for h in histories]
        idx, scores, states = self.ranker.top_n_with_states(histories, n, exclude)
        out = []
        for i in range(len(histories)):
            keep = idx[i] >= 0
            slate = self.policy.select(states[i], idx[i][keep], scores[i][keep], k)
            out.append([int(x) for x in slate])
        return out


def held_out(slates: list[list[int]], targets: list[int], k: int) -> dict[str, np.ndarray]:
    """Per user: NDCG@k and Recall@k (one relevant item) of a slate for the held-out target."""
    ndcg, recall = np.zeros(len(targets)), np.zeros(len(targets))
    for u, (slate, t) in enumerate(zip(slates, targets)):
        if t in slate[:k]:
            r = slate.index(t)
            ndcg[u], recall[u] = 1.0 / np.log2(r + 2), 1.0
    return {"ndcg": ndcg, "recall": recall}


def logged_slots(impressions: list[Impression], clicked: dict[str, set[str]], index: dict[str, int]):
    """The logged slots as arrays: (impression row, item index, position, propensity, reward)."""
    rows, items, pos, ps, rew = [], [], [], [], []
    for r, imp in enumerate(impressions):
        for item, p, prop in zip(imp.items, imp.positions, imp.propensities):
            if item not in index:
                continue
            rows.append(r), items.append(index[item]), pos.append(int(p)), ps.append(float(prop))
            rew.append(1.0 if item in clicked.get(imp.impression_id, ()) else 0.0)
    return (np.asarray(rows, dtype=np.int64), np.asarray(items, dtype=np.int64), np.asarray(pos, dtype=np.int64),
            np.clip(np.asarray(ps, dtype=np.float64), 1e-6, 1.0), np.asarray(rew, dtype=np.float64))


def ope_terms(slates: list[list[int]], slots, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """For one version: pi(logged item | its position) per slot (1 where the version's slate has it there) and the
    per-slot arrays ope.snips/ope.dr take, with two actions: the logged item (0) and anything else (1)."""
    rows, items, pos, _ps, _r = slots
    pi = np.array([1.0 if p < len(slates[r]) and slates[r][p] == a else 0.0
                   for r, a, p in zip(rows, items, pos)])
    dist = np.zeros((len(rows), 2, n_positions))
    dist[:, 1, :] = 1.0  # at the other positions only the slot's own one matters to the estimators
    dist[np.arange(len(rows)), 0, pos] = pi
    dist[np.arange(len(rows)), 1, pos] = 1.0 - pi
    return pi, dist


def _ope(slots, dist, n_positions: int, cfg: OpeConfig) -> dict:
    rows, _items, pos, ps, rew = slots
    action = np.zeros(len(rows), dtype=np.int64)
    ctr = np.array([rew[pos == p].mean() if (pos == p).any() else 0.0 for p in range(n_positions)])
    q_hat = np.broadcast_to(ctr[None, None, :], dist.shape).copy()  # per-position click rate, any item
    return {"snips": snips(rew, action, pos, ps, dist, cfg).as_dict(),
            "dr": dr(rew, action, pos, ps, dist, q_hat, cfg).as_dict()}, ctr


def _snips_dr_value(w, rew, qp):
    """SNIPS and DR point values from weights, rewards and the reward model at each slot's position."""
    s = float((w * rew).sum() / w.sum()) if w.sum() > 0 else 0.0
    # DR with q(a, p) = ctr_p for every a: DM term is ctr_p (pi sums to 1 over actions), plus w * (r - ctr_p)
    d = float(np.mean(qp + w * (rew - qp)))
    return s, d


def paired_interval(values_fn, n_units: int, rule: GuardRule) -> tuple[float, float]:
    """Percentile interval of values_fn(resampled unit indices) (the candidate - serving difference)."""
    rng = np.random.default_rng(rule.seed)
    draws = [values_fn(rng.integers(0, n_units, n_units)) for _ in range(rule.n_boot)]
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def compare(serving: VersionScorer, candidate: VersionScorer, impressions: list[Impression],
            clicked: dict[str, set[str]], imp_histories: list[list[int]], index: dict[str, int],
            users_hist: list[list[int]], targets: list[int], rule: GuardRule) -> dict:
    """Both versions' figures on the same impressions and held-out events, the paired differences and the
    decision: {"figures": {serving, candidate}, "differences": {...}, "skipped": [...], "rolled_in", "reason"}."""
    figures: dict[str, dict] = {"serving": {}, "candidate": {}}
    diffs: dict[str, dict] = {}
    skipped: list[str] = []
    cfg = OpeConfig(n_boot=max(10, rule.n_boot), seed=rule.seed)

    if len(impressions) >= rule.min_units:
        slots = logged_slots(impressions, clicked, index)
        n_pos = int(slots[2].max()) + 1 if len(slots[2]) else 1
        k = max(n_pos, rule.k)
        w = {}
        for name, v in (("serving", serving), ("candidate", candidate)):
            pi, dist = ope_terms(v.slates(imp_histories, k), slots, n_pos)
            figures[name].update(_ope(slots, dist, n_pos, cfg)[0])
            w[name] = pi / slots[3]
        rows, rew = slots[0], slots[4]
        qp = np.array([rew[slots[2] == p].mean() for p in range(n_pos)])[slots[2]]
        by_imp = [np.flatnonzero(rows == r) for r in range(len(impressions))]

        def diff(metric_i):
            def fn(sample):
                sel = np.concatenate([by_imp[r] for r in sample]) if len(sample) else np.zeros(0, dtype=np.int64)
                c = _snips_dr_value(w["candidate"][sel], rew[sel], qp[sel])[metric_i]
                s = _snips_dr_value(w["serving"][sel], rew[sel], qp[sel])[metric_i]
                return c - s
            return fn

        for i, m in enumerate(OPE_METRICS):
            point = diff(i)(np.arange(len(impressions)))
            lo, hi = paired_interval(diff(i), len(impressions), rule)
            diffs[m] = {"value": point, "ci95": [lo, hi], "units": len(impressions), "tolerance": rule.ope_tolerance}
    else:
        skipped.append(f"impressions: {len(impressions)} < min_units {rule.min_units}")

    if len(targets) >= rule.min_units:
        per = {name: held_out(v.slates(users_hist, rule.k), targets, rule.k)
               for name, v in (("serving", serving), ("candidate", candidate))}
        for m in RANK_METRICS:
            for name in per:
                figures[name][f"{m}@{rule.k}"] = float(per[name][m].mean())
            d = per["candidate"][m] - per["serving"][m]
            lo, hi = paired_interval(lambda s, d=d: float(d[s].mean()), len(d), rule)
            diffs[f"{m}@{rule.k}"] = {"value": float(d.mean()), "ci95": [lo, hi], "units": len(d),
                                      "tolerance": rule.rank_tolerance}
    else:
        skipped.append(f"held-out users: {len(targets)} < min_units {rule.min_units}")

    ok, reason = judge(diffs, skipped, rule)
    return {"figures": figures, "differences": diffs, "skipped": skipped, "rolled_in": ok, "reason": reason,
            "rule": asdict(rule)}


def underpowered(d: dict, rule: GuardRule) -> bool:
    """True when a difference's interval is too wide to show "not worse" at its tolerance (module docstring)."""
    lo, hi = d["ci95"]
    return rule.decisive_factor > 0 and (hi - lo) / 2 > rule.decisive_factor * d["tolerance"]


def judge(diffs: dict[str, dict], skipped: list[str], rule: GuardRule) -> tuple[bool, str]:
    """(rolled in, reason) from the paired differences ({metric: {value, ci95, units, tolerance}}): refused when
    a decisive metric's low end is below -tolerance or an underpowered one lies wholly below 0, or when no metric
    could decide; otherwise not worse. Each underpowered metric is named in the reason."""
    weak = [m for m, d in diffs.items() if underpowered(d, rule)]
    worse = [f"{m} difference {d['value']:+.4f} (95% low {d['ci95'][0]:+.4f} < -{d['tolerance']})"
             for m, d in diffs.items() if m not in weak and d["ci95"][0] < -d["tolerance"]]
    worse += [f"{m} difference {d['value']:+.4f} (95% high {d['ci95'][1]:+.4f} < 0)"
              for m, d in diffs.items() if m in weak and d["ci95"][1] < 0]
    note = (" (underpowered, judged only for being worse: " + ", ".join(
        f"{m} +-{(diffs[m]['ci95'][1] - diffs[m]['ci95'][0]) / 2:.3f}" for m in weak) + ")") if weak else ""
    if not diffs:
        return False, "no metric had enough units (" + "; ".join(skipped) + ")"
    if worse:
        return False, "worse than serving: " + ", ".join(worse) + note
    decisive = [m for m in diffs if m not in weak]
    if not decisive:
        return False, "no metric had the units to decide at its tolerance" + note
    return True, "not worse on " + ", ".join(decisive) + " (every difference's 95% low >= -tolerance)" + note
