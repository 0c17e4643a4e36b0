"""Request-time business rules: filters, boosts, pins, diversity and repurchase, applied before the top k.

A shop needs answers it can steer per request: only this category or brand, a price range, only what is in
stock, only articles; lift a brand; pin a campaign item to slot 1; no more than two items of one category; let
consumables come back a month after the last purchase. `select` takes every item's score (or a candidate set
larger than k) and returns k items that satisfy the rules whenever k eligible items exist, because filtering
happens before the cut, never after it.

Order of work, per request:
1. eligibility: available (unless `include_unavailable`), kind, categories (any of), brands (any of), price
   range (an item without a price fails a price filter), and history: items the user has seen are excluded,
   except those in a `repurchase` category whose last interaction is at least that category's gap ago;
2. boosts: ``score += weight`` for every matching ``category:NAME``, ``brand:NAME`` or ``item:ID`` key, on the
   z-standardised scores (so a weight is in standard deviations, whatever the model);
3. diversity: ``mmr`` picks greedily ``argmax lambda * rel - (1 - lambda) * max cos(item, picked)`` over the
   item vectors (rel: the boosted scores rescaled to [0, 1]); ``category_cap`` skips an item once `cap` items of
   any of its categories are in the list (a hard cap: fewer than k come back when the cap leaves fewer than k
   eligible; pinned items do not count against it); ``none`` takes the best scores;
4. pins: each pinned item that is eligible (pins still respect availability and the filters) is placed at its
   position and removed from elsewhere; the rest keep their order.

Content (articles, videos, ...) is mixed in by two more rules. Freshness, between steps 2 and 3: an item with a
publication time loses appeal with age, ``p' = p * 2 ** (-age / freshness_half_life_s)`` where ``p = sigmoid(s)``
of its standardised score ``s`` (``s' = logit(p')``): a week-old article under a one-week half-life ranks as an
item half as appealing; items without a publication time (products) are unchanged. Kind quotas, in step 3:
``kind_quota = {"article": 2}`` reserves two of the k slots for the two best eligible articles (fewer when fewer
qualify) and keeps every other article out; kinds not named fill the remaining slots as the diversity setting
says; the reserved items are merged into that list by score.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DIVERSITY = ("none", "mmr", "category_cap")


@dataclass
class ItemAttributes:
    """Per-item attributes aligned with the catalogue's item index (length n_items each)."""

    item_ids: np.ndarray  # str
    categories: list[frozenset[str]]
    brand: np.ndarray  # str, "" unknown
    price: np.ndarray  # float, NaN unknown
    available: np.ndarray  # bool
    kind: np.ndarray  # str: product, article, video, ...
    published: np.ndarray | None = None  # float unix seconds, NaN unknown (products); None: none known

    def __post_init__(self):
        n = len(self.item_ids)
        if self.published is None:
            self.published = np.full(n, np.nan)
        for name in ("categories", "brand", "price", "available", "kind", "published"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ItemAttributes.{name} has {len(getattr(self, name))} entries for {n} items")
        self._index = {str(i): j for j, i in enumerate(self.item_ids)}

    def index(self, item_id: str) -> int | None:
        return self._index.get(str(item_id))

    @classmethod
    def from_items(cls, items) -> ItemAttributes:
        """From a catalogue DataFrame: `item` and optional `categories` (list or '|'/','-joined text), `brand`,
        `price`, `available`, `kind`, `published` (unix seconds) columns (missing: unknown, in stock, product,
        unknown)."""
        n = len(items)

        def col(name, default):
            return items[name].tolist() if name in items.columns else [default] * n

        cats = []
        for c in col("categories", None):
            if c is None or (isinstance(c, float) and math.isnan(c)):
                cats.append(frozenset())
            elif isinstance(c, str):
                sep = "|" if "|" in c else ","
                cats.append(frozenset(s.strip() for s in c.split(sep) if s.strip()))
            else:
                cats.append(frozenset(str(s) for s in c))
        price = np.array([np.nan if p is None else float(p) for p in col("price", None)], dtype=np.float64)
        return cls(item_ids=np.asarray(items["item"].astype(str).to_numpy()), categories=cats,
                   brand=np.array(["" if b is None or b != b else str(b) for b in col("brand", "")], dtype=object),
                   price=price, available=np.array([bool(a) for a in col("available", True)], dtype=bool),
                   kind=np.array([str(k or "product") for k in col("kind", "product")], dtype=object),
                   published=np.array([_seconds(t) for t in col("published", None)], dtype=np.float64))


def _seconds(value) -> float:
    """A publication time as unix seconds: a number or numeric text; NaN for anything else (unknown)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        return math.nan
    return t if math.isfinite(t) else math.nan


@dataclass
class Rules:
    """One request's rules; the defaults change nothing except that unavailable items are never returned."""

    categories: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    price_min: float | None = None
    price_max: float | None = None
    include_unavailable: bool = False
    exclude_seen: bool = True
    boosts: dict[str, float] = field(default_factory=dict)  # "category:X" / "brand:Y" / "item:Z" -> weight
    pins: dict[int, str] = field(default_factory=dict)  # 0-based position -> item id
    diversity: str = "none"
    mmr_lambda: float = 0.7
    category_cap: int = 0
    repurchase_gap_s: dict[str, float] = field(default_factory=dict)  # category -> minimum seconds since last
    kind_quota: dict[str, int] = field(default_factory=dict)  # kind -> slots reserved for its best items
    freshness_half_life_s: float = 0.0  # > 0: items with a publication time lose half their appeal per this age

    def __post_init__(self):
        if self.diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {DIVERSITY}, got {self.diversity!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.diversity == "category_cap" and self.category_cap < 1:
            raise ValueError("category_cap must be at least 1 with diversity 'category_cap'")
        for lo_hi in (self.price_min, self.price_max):
            if lo_hi is not None and not math.isfinite(lo_hi):
                raise ValueError("price_min/price_max must be finite numbers")
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min {self.price_min} is above price_max {self.price_max}")
        for key, w in self.boosts.items():
            kind, _, name = key.partition(":")
            if kind not in ("category", "brand", "item") or not name:
                raise ValueError(f"boosts key {key!r} must be category:NAME, brand:NAME or item:ID")
            if not math.isfinite(w):
                raise ValueError(f"boosts[{key!r}] must be finite")
        for pos in self.pins:
            if pos < 0:
                raise ValueError(f"pins position {pos} must be >= 0")
        for cat, gap in self.repurchase_gap_s.items():
            if not (math.isfinite(gap) and gap >= 0):
                raise ValueError(f"repurchase_gap_s[{cat!r}] must be >= 0")
        for kind, n in self.kind_quota.items():
            if not kind or int(n) < 1:
                raise ValueError(f"kind_quota[{kind!r}] must be a kind with at least 1 slot")
        if not (math.isfinite(self.freshness_half_life_s) and self.freshness_half_life_s >= 0):
            raise ValueError("freshness_half_life_s must be a finite number >= 0")


def eligible(attrs: ItemAttributes, rules: Rules, history: Sequence[int] = (), history_ts: Sequence[float] = (),
             now: float | None = None) -> np.ndarray:
    """Boolean mask over the catalogue of items the rules allow for this user (step 1)."""
    n = len(attrs.item_ids)
    ok = np.ones(n, dtype=bool) if rules.include_unavailable else attrs.available.copy()
    if rules.kinds:
        ok &= np.isin(attrs.kind, list(rules.kinds))
    if rules.brands:
        ok &= np.isin(attrs.brand, list(rules.brands))
    if rules.categories:
        ok &= np.fromiter((bool(c & rules.categories) for c in attrs.categories), dtype=bool, count=n)
    if rules.price_min is not None:
        ok &= attrs.price >= rules.price_min  # NaN compares False: an unknown price fails the filter
    if rules.price_max is not None:
        ok &= attrs.price <= rules.price_max
    if rules.exclude_seen and len(history):
        hist = np.asarray(history, dtype=np.int64)
        seen = np.zeros(n, dtype=bool)
        seen[hist] = True
        if rules.repurchase_gap_s and len(history_ts) == len(hist):
            last: dict[int, float] = {}
            for i, t in zip(hist.tolist(), history_ts):
                if math.isfinite(float(t)):  # an interaction of unknown time keeps its item seen
                    last[i] = max(last.get(i, -math.inf), float(t))
            now = float(now if now is not None else max(last.values(), default=0.0))
            for i, t in last.items():
                gaps = [rules.repurchase_gap_s[c] for c in attrs.categories[i] if c in rules.repurchase_gap_s]
                if gaps and now - t >= min(gaps):
                    seen[i] = False
        ok &= ~seen
    return ok


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def boosted(scores: np.ndarray, attrs: ItemAttributes, rules: Rules, items: np.ndarray) -> np.ndarray:
    """z(scores) plus the boosts that match each of `items` (step 2)."""
    s = _z(np.asarray(scores, dtype=np.float64))
    for key, w in rules.boosts.items():
        kind, _, name = key.partition(":")
        if kind == "item":
            j = attrs.index(name)
            s[items == j] += w if j is not None else 0.0
        elif kind == "brand":
            s[attrs.brand[items] == name] += w
        else:
            s[np.fromiter((name in attrs.categories[i] for i in items), dtype=bool, count=len(items))] += w
    return s


def freshened(s: np.ndarray, attrs: ItemAttributes, rules: Rules, items: np.ndarray, now: float) -> np.ndarray:
    """Standardised scores `s` of `items` after the recency decay of those with a publication time (see the
    module docstring); unchanged without a half-life."""
    if not rules.freshness_half_life_s or not len(items):
        return s
    published = attrs.published[items]
    dated = np.isfinite(published)
    if not dated.any():
        return s
    age = np.maximum(now - published[dated], 0.0)
    # log p' = log sigmoid(s) - age/h * ln 2, back through logit; in log space so old items do not underflow
    log_p = -np.logaddexp(0.0, -s[dated]) - age / rules.freshness_half_life_s * math.log(2.0)
    out = s.copy()
    out[dated] = log_p - np.log(-np.expm1(np.minimum(log_p, -1e-12)))
    return out


def quota_short(items: np.ndarray, attrs: ItemAttributes, rules: Rules, eligible_by_kind: dict[str, int]) -> bool:
    """True when some kind of `rules.kind_quota` has fewer of `items` than its quota although more of its items
    are eligible: the candidates did not reach far enough down that kind (the caller fetches more)."""
    if not rules.kind_quota:
        return False
    kinds = attrs.kind[np.asarray(items, dtype=np.int64)] if len(items) else np.zeros(0, dtype=object)
    return any(int((kinds == kind).sum()) < min(int(q), eligible_by_kind.get(kind, 0))
               for kind, q in rules.kind_quota.items())


def select(scores: np.ndarray, attrs: ItemAttributes, rules: Rules, k: int, candidates: np.ndarray | None = None,
           item_vectors: np.ndarray | None = None, history: Sequence[int] = (), history_ts: Sequence[float] = (),
           now: float | None = None, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores): up to k item indices that satisfy `rules`, best first, and their boosted scores.

    scores: one per candidate (candidates: item indices; None = the whole catalogue, scores per item). k items
    come back whenever k candidates are eligible. item_vectors [n_items, d] are needed for `mmr`. `mask`:
    `eligible(attrs, rules, history, history_ts, now)` when the caller has it already (it is computed here
    otherwise)."""
    cands = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if len(cands) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(cands)} candidates")
    if mask is None:
        mask = eligible(attrs, rules, history, history_ts, now)
    keep = mask[cands] & np.isfinite(scores)
    _, first = np.unique(cands, return_index=True)
    unique = np.zeros(len(cands), dtype=bool)
    unique[first] = True
    keep &= unique
    cands, scores = cands[keep], scores[keep]
    k = int(k)
    pinned = {p: attrs.index(i) for p, i in sorted(rules.pins.items())}
    pinned = {p: j for p, j in pinned.items() if j is not None and mask[j]}
    pinned_items = set(pinned.values())
    if len(pinned_items) < len(pinned):  # one item pinned twice: keep its first position
        seen: set[int] = set()
        pinned = {p: j for p, j in pinned.items() if not (j in seen or seen.add(j))}
    free = ~np.isin(cands, list(pinned_items))
    s = boosted(scores, attrs, rules, cands) if len(cands) else scores
    s = freshened(s, attrs, rules, cands, time.time() if now is None else float(now))
    cands, s = cands[free], s[free]
    picked, picked_scores = _with_quotas(cands, s, attrs, rules, k, item_vectors)
    for pos, j in pinned.items():
        pos = min(pos, len(picked))
        picked.insert(pos, j)
        picked_scores.insert(pos, picked_scores[pos - 1] if pos > 0 and picked_scores else
                             (max(picked_scores) if picked_scores else 0.0))
    return np.asarray(picked[:k], dtype=np.int64), np.asarray(picked_scores[:k], dtype=np.float64)


def _with_quotas(cands: np.ndarray, s: np.ndarray, attrs: ItemAttributes, rules: Rules, k: int,
                 item_vectors) -> tuple[list[int], list[float]]:
    """Items and scores in list order (step 3): the kinds with a quota take their best items, the others are
    diversified into the remaining slots, and the reserved items are merged in by score."""
    if not rules.kind_quota:
        order = _diverse(cands, s, attrs, rules, k, item_vectors)
        return [int(cands[o]) for o in order], [float(s[o]) for o in order]
    kinds = attrs.kind[cands] if len(cands) else np.zeros(0, dtype=object)
    reserved: list[int] = []
    for kind, q in rules.kind_quota.items():
        of_kind = np.flatnonzero(kinds == kind)
        reserved.extend(of_kind[np.argsort(-s[of_kind], kind="stable")][:int(q)].tolist())
    reserved.sort(key=lambda o: (-s[o], o))
    reserved = reserved[:k]
    rest = np.flatnonzero(~np.isin(kinds, list(rules.kind_quota)))
    others = [int(rest[o]) for o in _diverse(cands[rest], s[rest], attrs, rules, k - len(reserved), item_vectors)]
    merged, r = [], 0
    for o in others:
        while r < len(reserved) and s[reserved[r]] > s[o]:
            merged.append(reserved[r])
            r += 1
        merged.append(o)
    merged.extend(reserved[r:])
    return [int(cands[o]) for o in merged], [float(s[o]) for o in merged]


def _diverse(cands: np.ndarray, s: np.ndarray, attrs: ItemAttributes, rules: Rules, k: int,
             item_vectors: np.ndarray | None) -> list[int]:
    """Positions into `cands` in list order (step 3)."""
    order = np.argsort(-s, kind="stable")
    if k <= 0:
        return []
    if rules.diversity == "none" or len(cands) == 0:
        return order[:k].tolist()
    if rules.diversity == "category_cap":
        counts: dict[str, int] = {}
        out = []
        for o in order:
            cats = attrs.categories[cands[o]]
            if any(counts.get(c, 0) >= rules.category_cap for c in cats):
                continue
            for c in cats:
                counts[c] = counts.get(c, 0) + 1
            out.append(int(o))
            if len(out) == k:
                break
        return out
    if item_vectors is None:
        raise ValueError("diversity 'mmr' needs item vectors")
    pool = order[:max(k * 10, 100)]  # MMR over the best candidates; the tail cannot win against them
    v = np.asarray(item_vectors[cands[pool]], dtype=np.float64)  # only the pool's rows (any row lookup)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    rel = s[pool]
    rel = (rel - rel.min()) / (rel.max() - rel.min()) if rel.max() > rel.min() else np.ones_like(rel)
    lam = rules.mmr_lambda
    max_sim = np.full(len(pool), -np.inf)
    taken = np.zeros(len(pool), dtype=bool)
    out = []
    for _ in range(min(k, len(pool))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = np.where(taken, -np.inf, lam * rel - (1 - lam) * penalty)
        b = int(np.argmax(value))
        taken[b] = True
        out.append(int(pool[b]))
        max_sim = np.maximum(max_sim, v @ v[b])
    return out


def intra_list_diversity(items: np.ndarray, item_vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance of a list's item vectors (0 for fewer than two items)."""
    if len(items) < 2:
        return 0.0
    v = np.asarray(item_vectors, dtype=np.float64)[np.asarray(items)]
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    n = len(items)
    return float((n * n - sim.sum()) / (n * (n - 1)))
