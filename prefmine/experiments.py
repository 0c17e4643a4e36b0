"""A/B experiments: named arms, a stable assignment of users to arms, and each arm's rates with intervals.

An experiment splits traffic by a stable hash of the user's pseudonym: ``sha256(salt + ":" + user)`` read as a
number in [0, 1) falls into one arm's share of the cumulative weights. The same user lands in the same arm on
every replica, node and restart, with no state to share, and a new salt reshuffles everyone (a new experiment).
Each arm names what it serves: a bundle version, a policy (``learned``, ``greedy``, ``popularity``, ...) or both.

The report joins the impression log to the feedback that names each impression (``FeedbackStore``): an
impression counts as clicked when at least one ``click`` (or ``cart``/``buy``, which imply one) answers it, as
purchased when a ``buy`` does. Rates are per impression. Each comes with two 95% intervals: Wilson's, which
treats impressions as independent, and one clustered by user (``*_ci95_users``: the delta method for a ratio of
per-user sums, as in Deng et al., "Applying the Delta Method in Metric Analytics", KDD 2018). Users are what an
experiment randomises, and one user's impressions are alike, so the per-impression interval is too narrow when
users see many slates; the clustered one is the one to decide on. Arms are also compared with the first arm (the
baseline): each difference of rates with its clustered interval (the arms' users are disjoint, so the variances
add). The arm of an impression is the one it was logged with, so the report needs only the log and the config.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

CLICK_EVENTS = frozenset({"click", "cart", "buy"})
PURCHASE_EVENTS = frozenset({"buy"})
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float = 1.0
    bundle: str | None = None  # bundle version (directory) this arm serves; None: the application's bundle
    policy: str | None = None  # policy this arm orders slates with; None: the bundle's chosen policy


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: its name, the salt of the user hash, and its arms (at least one, positive weights)."""

    name: str
    salt: str
    arms: tuple[Arm, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.name or not self.salt:
            raise ValueError("experiment needs a name and a salt")
        if not self.arms:
            raise ValueError(f"experiment {self.name!r} has no arms")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} repeats an arm name: {names}")
        for a in self.arms:
            if not (isinstance(a.weight, (int, float)) and math.isfinite(a.weight) and a.weight > 0):
                raise ValueError(f"arm {a.name!r}: weight must be a positive number, got {a.weight!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """From a parsed YAML/JSON mapping ``{name, salt, arms: [{name, weight, bundle, policy}]}``."""
        if not isinstance(d, dict):
            raise ValueError(f"experiment must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"name", "salt", "arms"}
        if unknown:
            raise ValueError(f"experiment: unknown keys {sorted(unknown)}")
        arms = []
        for i, a in enumerate(d.get("arms") or []):
            if not isinstance(a, dict) or "name" not in a:
                raise ValueError(f"experiment.arms[{i}] must be a mapping with a name")
            extra = set(a) - {"name", "weight", "bundle", "policy"}
            if extra:
                raise ValueError(f"experiment.arms[{i}]: unknown keys {sorted(extra)}")
            arms.append(Arm(name=str(a["name"]), weight=float(a.get("weight", 1.0)),
                            bundle=None if a.get("bundle") is None else str(a["bundle"]),
                            policy=None if a.get("policy") is None else str(a["policy"])))
        return cls(name=str(d.get("name") or ""), salt=str(d.get("salt") or ""), arms=tuple(arms))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "salt": self.salt,
                "arms": [{"name": a.name, "weight": a.weight, "bundle": a.bundle, "policy": a.policy}
                         for a in self.arms]}


def unit_hash(salt: str, user: str) -> float:
    """A number in [0, 1) that depends only on (salt, user): the first 8 bytes of sha256 over 2**64."""
    digest = hashlib.sha256(f"{salt}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(user: str, experiment: ExperimentConfig) -> Arm:
    """The arm `user` (a pseudonym) belongs to: the same on every call, replica and node."""
    u = unit_hash(experiment.salt, user) * sum(a.weight for a in experiment.arms)
    acc = 0.0
    for arm in experiment.arms:
        acc += arm.weight
        if u < acc:
            return arm
    return experiment.arms[-1]  # u == total only through rounding


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 0) for n = 0."""
    if n <= 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clustered_ratio(num, den, z: float = Z95) -> tuple[float, float, float]:
    """(ratio, low, high): sum(num) / sum(den) over clusters (users) and its delta-method interval, which lets each
    cluster's units be correlated. Var = sum_u (num_u - r den_u)^2 / (n (n - 1) mean(den)^2) over the n clusters;
    (r, r, r) with fewer than 2 clusters, (0, 0, 0) with no units."""
    import numpy as np

    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    total = float(den.sum())
    if total <= 0:
        return (0.0, 0.0, 0.0)
    r, n = float(num.sum()) / total, len(den)
    if n < 2:
        return (r, r, r)
    var = float(((num - r * den) ** 2).sum()) / (n * (n - 1) * float(den.mean()) ** 2)
    half = z * math.sqrt(var)
    return (r, r - half, r + half)


def _per_user(t: dict, key: str) -> tuple[list[int], list[int]]:
    users = t["per_user"]
    return [u[key] for u in users.values()], [u["impressions"] for u in users.values()]


def _difference(a: dict, b: dict, key: str, z: float = Z95) -> dict[str, Any]:
    """Arm a's rate minus arm b's, with the clustered interval (independent arms: the variances add)."""
    ra, la, ha = clustered_ratio(*_per_user(a, key))
    rb, lb, hb = clustered_ratio(*_per_user(b, key))
    half = math.hypot((ha - la) / 2, (hb - lb) / 2)
    return {"value": ra - rb, "ci95_users": [ra - rb - half, ra - rb + half]}


def report(store, experiment: ExperimentConfig, after_seq: int = 0, page: int = 10_000) -> dict[str, Any]:
    """Per arm: impressions, users, clicked and purchased impressions, their rates with Wilson and user-clustered
    95% intervals, read from a FeedbackStore's impression log (from seq `after_seq` on) joined to the feedback
    naming it; and each other arm's differences from the first arm (``differences``).

    Each impression counts for the arm it was logged with (what the user was actually shown), not the arm the
    experiment's hash gives now: a changed salt or weight re-assigns users, but not what they were served.
    Impressions logged with no arm or an arm this experiment does not have are counted in `unassigned` only."""
    tally = {a.name: {"impressions": 0, "clicks": 0, "purchases": 0, "per_user": {}} for a in experiment.arms}
    unassigned = 0
    seq = after_seq
    while True:
        imps = store.read_impressions_since(seq, page)
        if not imps:
            break
        seq = imps[-1].seq
        answers = store.feedback_for_impressions([i.impression_id for i in imps])
        for imp in imps:
            t = tally.get(imp.arm)
            if t is None:
                unassigned += 1
                continue
            events = {row[3] for row in answers.get(imp.impression_id, [])}
            u = t["per_user"].setdefault(imp.user, {"impressions": 0, "clicks": 0, "purchases": 0})
            clicked, bought = bool(events & CLICK_EVENTS), bool(events & PURCHASE_EVENTS)
            for d in (t, u):
                d["impressions"] += 1
                d["clicks"] += clicked
                d["purchases"] += bought
    arms = {}
    for a in experiment.arms:
        t = tally[a.name]
        n = t["impressions"]
        arms[a.name] = {"bundle": a.bundle, "policy": a.policy, "weight": a.weight, "impressions": n,
                        "users": len(t["per_user"]), "clicks": t["clicks"], "purchases": t["purchases"],
                        "ctr": t["clicks"] / n if n else 0.0, "ctr_ci95": list(wilson(t["clicks"], n)),
                        "ctr_ci95_users": list(clustered_ratio(*_per_user(t, "clicks"))[1:]),
                        "purchase_rate": t["purchases"] / n if n else 0.0,
                        "purchase_rate_ci95": list(wilson(t["purchases"], n)),
                        "purchase_rate_ci95_users": list(clustered_ratio(*_per_user(t, "purchases"))[1:])}
    base = experiment.arms[0].name
    differences = {f"{a.name} - {base}": {"ctr": _difference(tally[a.name], tally[base], "clicks"),
                                          "purchase_rate": _difference(tally[a.name], tally[base], "purchases")}
                   for a in experiment.arms[1:]}
    return {"experiment": experiment.name, "last_seq": seq, "arms": arms, "differences": differences,
            "unassigned": unassigned}


def format_report(rep: dict[str, Any]) -> str:
    """The report as a fixed-width table, one line per arm."""
    lines = [f"experiment {rep['experiment']} (95% intervals clustered by user)",
             f"{'arm':<16}{'impr.':>9}{'users':>8}{'CTR':>8}  {'95% CI':<17}{'buy rate':>9}  {'95% CI':<17}"]
    for name, a in rep["arms"].items():
        lo, hi = a["ctr_ci95_users"]
        plo, phi = a["purchase_rate_ci95_users"]
        lines.append(f"{name:<16}{a['impressions']:>9}{a['users']:>8}{a['ctr']:>8.4f}  [{lo:.4f}, {hi:.4f}]  "
                     f"{a['purchase_rate']:>8.4f}  [{plo:.4f}, {phi:.4f}]")
    for name, d in (rep.get("differences") or {}).items():
        c, p = d["ctr"], d["purchase_rate"]
        lines.append(f"{name:<33}{c['value']:>+8.4f}  [{c['ci95_users'][0]:+.4f}, {c['ci95_users'][1]:+.4f}]  "
                     f"{p['value']:>+8.4f}  [{p['ci95_users'][0]:+.4f}, {p['ci95_users'][1]:+.4f}]")
    if rep.get("unassigned"):
        lines.append(f"({rep['unassigned']} impressions logged with no arm of this experiment are not counted)")
    return "\n".join(lines)


def load_experiment(path) -> ExperimentConfig:
    """The experiment in a YAML/JSON file: either the experiment mapping itself or a Serve config whose
    application args carry it under ``experiment`` (the config the server runs with)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if isinstance(doc, dict) and "applications" in doc:
        found = [app.get("args", {}).get("experiment") for app in doc.get("applications") or []
                 if isinstance(app, dict) and isinstance(app.get("args"), dict) and app["args"].get("experiment")]
        if not found:
            raise ValueError(f"{path}: no application has args.experiment")
        doc = found[0]
    return ExperimentConfig.from_dict(doc)
