"""The closed-loop benchmark's library side (bench/closed_loop.py wires it to a live server): a simulated
population that answers served slates with clicks and purchases, and the per-arm tallies it reports.

A simulated user is a user of the data: their history is the bundle's catalogue history, and their response is the
calibrated simulator's (prefmine.policy.simulator, the response model fitted to the logged data,
`policy/response_model.npz`), frozen for the whole run: the service learns, the users' tastes do not change
(their histories grow with what they click). One
session is up to `pages` slates (each one Recommend); a slate is examined top to bottom, slot by slot as in the
simulator:

    P(click)       = attract(item | history) * fatigue(item | recently shown) * 1 / log2(pos + 2)
    P(buy | click) = the item's purchase rate
    P(leave)       = leave_prob + leave_prob_skip * [no click]   after every slot

A click joins the user's history at once (the service hears of it through RecordFeedback and uses it in the
user's next Recommend) and stays in it for the user's later sessions, as it does in the service's history (a user
who forgot their clicks between sessions would keep wanting what the service, rightly, no longer shows them). Each
page after the first asks for slates without the items the session has already shown (Recommend's
exclude_item_ids), as a client paging does and as the simulator does (a shown item is never proposed again in the
session); without it every later page repeated the first minus its clicks. The service is reached only through the
two callables a session is given, so this module knows nothing of gRPC or Ray.

An impression counts as clicked when at least one of its items was clicked and as purchased when one was bought,
the definition `prefmine experiments report` uses; rates are per impression with Wilson 95% intervals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prefmine.experiments import clustered_ratio, wilson
from prefmine.policy.response import ResponseModel, position_bias


@dataclass(frozen=True)
class PopulationConfig:
    """How simulated users browse (defaults: the simulator's, prefmine.policy.simulator.SimulatorConfig)."""

    k: int = 10  # items per slate (Recommend's k)
    pages: int = 3  # slates per session at most
    leave_prob: float = 0.05
    leave_prob_skip: float = 0.2
    fatigue: float = 0.6
    fatigue_window: int = 5

    @classmethod
    def like_simulator(cls, simulator: dict, k: int | None = None, pages: int | None = None) -> PopulationConfig:
        """The browsing of the simulator a policy was trained and gated on (its `policy_config.json` `simulator`):
        slates of its `slate_size`, as many pages as its `max_steps` fill, its leave and fatigue settings, so that
        the bench measures sessions like the ones the gate compared; `k`, `pages`: overrides."""
        k = int(k or simulator.get("slate_size") or 10)
        pages = int(pages or max(1, -(-int(simulator.get("max_steps", 3 * k)) // k)))
        keep = {n: simulator[n] for n in ("leave_prob", "leave_prob_skip", "fatigue", "fatigue_window")
                if n in simulator}
        return cls(k=k, pages=pages, **keep)

    def __post_init__(self):
        if self.k < 1 or self.pages < 1:
            raise ValueError(f"PopulationConfig: k ({self.k}) and pages ({self.pages}) must be >= 1")
        if not (0 <= self.leave_prob <= 1 and 0 <= self.leave_prob_skip <= 1 and 0 <= self.fatigue <= 1):
            raise ValueError("PopulationConfig: leave_prob, leave_prob_skip and fatigue must lie in [0, 1]")


@dataclass
class Slate:
    """One served answer as the population sees it: its impression id, arm and item ids (best first)."""

    impression_id: str
    arm: str
    items: list[str]


@dataclass
class Outcome:
    """What one impression got: clicked and bought item ids."""

    impression_id: str
    arm: str
    clicks: list[str] = field(default_factory=list)
    buys: list[str] = field(default_factory=list)


class Population:
    """Users of the data (raw id -> catalogue history as item indices) answering slates with the response model."""

    def __init__(self, response: ResponseModel, item_ids, histories: dict[str, list[int]],
                 cfg: PopulationConfig | None = None):
        if not histories:
            raise ValueError("Population: no users")
        self.response = response
        self.cfg = cfg or PopulationConfig()
        self.item_ids = [str(i) for i in item_ids]
        if len(self.item_ids) != response.n_items:
            raise ValueError(f"Population: {len(self.item_ids)} items but the response model has {response.n_items}")
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.users = sorted(histories)
        self.histories = {u: [int(i) for i in h] for u, h in histories.items()}
        self._unit = response.item_emb / np.maximum(np.linalg.norm(response.item_emb, axis=1, keepdims=True), 1e-8)
        self._lock = threading.Lock()  # client threads run sessions side by side; a user's clicks join under it

    def draw(self, rng: np.random.Generator) -> str:
        return self.users[int(rng.integers(len(self.users)))]

    def examine(self, history: list[int], shown: list[int], items: list[str], rng: np.random.Generator,
                outcome: Outcome) -> bool:
        """Examine one slate top to bottom, appending clicks (also to `history`) and buys to `outcome` and every
        shown item to `shown`; True when the user left during it. Items the catalogue does not know are skipped."""
        cfg = self.cfg
        for pos, item_id in enumerate(items):
            i = self.index.get(item_id)
            if i is None:
                continue
            p = float(self.response.attraction(np.asarray(history, dtype=np.int64), [i])[0])
            recent = shown[-cfg.fatigue_window:]
            if recent:
                dup = float(np.max(self._unit[recent] @ self._unit[i]))
                p *= 1.0 - cfg.fatigue * min(max(dup, 0.0), 1.0)
            p *= float(position_bias(pos))
            click = bool(rng.random() < p)
            if click:
                outcome.clicks.append(item_id)
                history.append(i)
                if rng.random() < float(self.response.buy_prob[i]):
                    outcome.buys.append(item_id)
            shown.append(i)
            if rng.random() < cfg.leave_prob + (0.0 if click else cfg.leave_prob_skip):
                return True
        return False

    def session(self, user: str, recommend: Callable[[str, int, list[str]], Slate],
                feedback: Callable[[str, Outcome], None], rng: np.random.Generator) -> list[Outcome]:
        """One session of `user`: up to `pages` slates from `recommend(user, k, exclude)` (`exclude`: the item ids
        this session has shown so far), each examined, its clicks and buys sent with `feedback(user, outcome)`
        before the next slate is asked for (when there were any). The session's clicks join the user's stored
        history when it ends."""
        with self._lock:
            history = list(self.histories.get(user, []))
        start = len(history)
        shown: list[int] = []
        shown_ids: list[str] = []
        out = []
        for _ in range(self.cfg.pages):
            slate = recommend(user, self.cfg.k, list(shown_ids))
            outcome = Outcome(slate.impression_id, slate.arm)
            left = self.examine(history, shown, slate.items, rng, outcome)
            shown_ids += [i for i in slate.items if i not in shown_ids]
            if outcome.clicks:
                feedback(user, outcome)
            out.append(outcome)
            if left:
                break
        with self._lock:
            self.histories.setdefault(user, []).extend(history[start:])
        return out


@dataclass
class ArmTally:
    """Sessions, impressions, clicked and purchased impressions of one arm (or one arm in one round), and the
    session return the policy gate compares (clicks + purchases per session, the simulator's reward with
    purchase_value 1); per user too, for intervals clustered by user (prefmine.experiments.clustered_ratio):
    the experiment randomises users, each of whom runs many sessions."""

    sessions: int = 0
    impressions: int = 0
    clicked: int = 0
    purchased: int = 0
    return_sum: float = 0.0
    return_sq: float = 0.0
    per_user: dict = field(default_factory=dict)  # user -> [sessions, impressions, clicked, purchased, return]

    def add_session(self, outcomes: list[Outcome], user: str | None = None) -> None:
        self.sessions += 1
        ret = clicked = purchased = 0
        for o in outcomes:
            self.impressions += 1
            clicked += bool(o.clicks)
            purchased += bool(o.buys)
            ret += len(o.clicks) + len(o.buys)
        self.clicked += clicked
        self.purchased += purchased
        self.return_sum += ret
        self.return_sq += ret * ret
        u = self.per_user.setdefault(user if user is not None else f"session-{self.sessions}", [0, 0, 0, 0, 0])
        for j, v in enumerate((1, len(outcomes), clicked, purchased, ret)):
            u[j] += v

    def summary(self) -> dict:
        n, s = self.impressions, self.sessions
        mean = self.return_sum / s if s else 0.0
        var = max(self.return_sq / s - mean * mean, 0.0) * s / (s - 1) if s > 1 else 0.0
        half = 1.96 * (var / s) ** 0.5 if s else 0.0
        users = np.asarray(list(self.per_user.values()), dtype=np.float64).reshape(-1, 5)
        return {"sessions": s, "impressions": n, "clicked": self.clicked, "purchased": self.purchased,
                "users": len(users),
                "ctr": self.clicked / n if n else 0.0, "ctr_ci95": list(wilson(self.clicked, n)),
                "ctr_ci95_users": list(clustered_ratio(users[:, 2], users[:, 1])[1:]),
                "purchase_rate": self.purchased / n if n else 0.0,
                "purchase_rate_ci95": list(wilson(self.purchased, n)),
                "purchase_rate_ci95_users": list(clustered_ratio(users[:, 3], users[:, 1])[1:]),
                "return_per_session": mean, "return_per_session_ci95": [mean - half, mean + half],
                "return_per_session_ci95_users": list(clustered_ratio(users[:, 4], users[:, 0])[1:])}


def separated(above: dict, below: dict, rate: str, interval: str = "ci95_users") -> bool:
    """True when `above`'s 95% interval of `rate` lies wholly above `below`'s (the intervals do not overlap);
    `interval`: "ci95_users" (clustered by user) or "ci95" (per impression or session)."""
    return above[f"{rate}_{interval}"][0] > below[f"{rate}_{interval}"][1]


def verdict(arms: dict[str, dict], learning: str, control: str) -> dict:
    """Whether the learning arm beats the control arm: its click-rate interval, clustered by user, lies above the
    control's (the purchase rate and the session return the gate compares are reported beside it, a lower
    learning interval is named too, and so is what the per-impression intervals would have said)."""
    la, ca = arms[learning], arms[control]
    return {"learning_arm": learning, "control_arm": control,
            "learning_beats_control": separated(la, ca, "ctr"),
            "learning_below_control": separated(ca, la, "ctr"),
            "purchase_rate_separates_above": separated(la, ca, "purchase_rate"),
            "return_per_session_separates_above": separated(la, ca, "return_per_session"),
            "per_impression_intervals_separate": separated(la, ca, "ctr", "ci95"),
            "rule": "the learning arm's CTR 95% interval, clustered by user, lies wholly above the control's"}


def percentiles(latencies_ms: list[float]) -> dict:
    """n, p50, p90, p99 and max of a list of latencies in milliseconds (all None when it is empty)."""
    if not latencies_ms:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(latencies_ms, dtype=np.float64)
    return {"n": int(len(a)), **{f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)},
            "max": round(float(a.max()), 2)}


def split_by_windows(samples: list[tuple[float, float]], windows: list[tuple[float, float]]):
    """(latencies inside any [start, end] window, latencies outside) of (start time, latency) samples."""
    inside, outside = [], []
    for t, ms in samples:
        (inside if any(a <= t <= b for a, b in windows) else outside).append(ms)
    return inside, outside
