"""A request's ``prefmine.v1.Rules`` as ``prefmine.rules.Rules``, and the selection the ingress runs with them.

The ingress validates the message first (serve/validate.py), so the conversion here only maps fields: enum to
diversity name, unset optional fields to their defaults, pins to ``{position: item id}``. ``ruled_selection``
is ``prefmine.rules.select`` over the candidates one RPC has (the ranker's top candidates, every item's
popularity or similarity, Search's pool), with the item vectors MMR needs given for those candidates only
(``CandidateVectors``), so the ingress never holds the whole catalogue's vectors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from prefmine.rules import ItemAttributes, Rules, eligible, quota_short, select
from prefmine.v1 import recommender_pb2 as pb

DIVERSITY_NAMES = {pb.DIVERSITY_NONE: "none", pb.DIVERSITY_MMR: "mmr", pb.DIVERSITY_CATEGORY_CAP: "category_cap"}
DEFAULT_MMR_LAMBDA = 0.7


def rules_of(msg: pb.Rules, exclude_seen: bool = True) -> Rules:
    """The library rules of a validated ``Rules`` message. ``exclude_seen``: leave out the history the caller
    passes to the selection (Recommend); Search and SimilarItems pass no history."""
    return Rules(
        categories=frozenset(msg.categories), brands=frozenset(msg.brands), kinds=frozenset(msg.kinds),
        price_min=msg.price_min if msg.HasField("price_min") else None,
        price_max=msg.price_max if msg.HasField("price_max") else None,
        include_unavailable=bool(msg.include_unavailable), exclude_seen=exclude_seen,
        boosts={str(key): float(w) for key, w in msg.boosts.items()},
        pins={int(p.position): str(p.item_id) for p in msg.pins},
        diversity=DIVERSITY_NAMES[msg.diversity],
        mmr_lambda=msg.mmr_lambda if msg.HasField("mmr_lambda") else DEFAULT_MMR_LAMBDA,
        category_cap=int(msg.category_cap),
        repurchase_gap_s={str(cat): float(gap) for cat, gap in msg.repurchase_gap_s.items()},
        kind_quota={str(kind): int(n) for kind, n in msg.kind_quota.items()},
        freshness_half_life_s=float(msg.freshness_half_life_s))


class CandidateVectors:
    """Item vectors for some item indices, indexed by item index like a [n_items, d] array (rows of other items
    are not there: indexing one raises KeyError)."""

    def __init__(self, items: np.ndarray, vectors: np.ndarray):
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(items, kind="stable")
        self.items, self.vectors = items[order], np.asarray(vectors, dtype=np.float32)[order]
        if len(self.items) != len(self.vectors):
            raise ValueError(f"{len(self.vectors)} vectors for {len(self.items)} items")

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(self.items, idx)
        pos = np.minimum(pos, max(len(self.items) - 1, 0))
        if len(self.items) == 0 or (idx.size and not np.array_equal(self.items[pos], idx)):
            raise KeyError("CandidateVectors: an item without a vector was asked for")
        return self.vectors[pos]


def allowed_mask(attrs: ItemAttributes, rules: Rules, history: Sequence[int] = (),
                 exclude: Sequence[int] = (), history_ts: Sequence[float] = (),
                 now: float | None = None) -> np.ndarray:
    """Items the rules allow (``prefmine.rules.eligible``: ``history_ts``, one time per history item, and ``now``
    decide repurchase), ``exclude`` (the request's excluded items) also left out: what the ranker may propose."""
    mask = eligible(attrs, rules, history, history_ts, now)
    if len(exclude):
        mask[np.fromiter(exclude, dtype=np.int64, count=len(exclude))] = False
    return mask


def ruled_selection(scores: np.ndarray, candidates: np.ndarray, attrs: ItemAttributes, rules: Rules, k: int,
                    vectors: CandidateVectors | None = None, history: Sequence[int] = (),
                    exclude: Sequence[int] = (), history_ts: Sequence[float] = (),
                    now: float | None = None, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items, rule scores): ``prefmine.rules.select`` over ``candidates`` (item indices) with ``scores``, the
    candidates in ``exclude`` left out first (pinned ones included). ``vectors`` must hold every candidate's
    vector when the rules ask for MMR; ``mask``, select's, when the caller has it."""
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if len(exclude):
        keep = ~np.isin(candidates, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        candidates, scores = candidates[keep], scores[keep]
        excluded = set(int(i) for i in exclude)
        pins = {p: i for p, i in rules.pins.items() if attrs.index(i) not in excluded}
        if len(pins) != len(rules.pins):
            rules = replace(rules, pins=pins)
    return select(scores, attrs, rules, k, candidates=candidates, item_vectors=vectors, history=history,
                  history_ts=history_ts, now=now, mask=mask)


async def ruled_top(attrs: ItemAttributes, rules: Rules, k: int, available: int, first: int, fetch,
                    vectors_of=None, history: Sequence[int] = (), exclude: Sequence[int] = (),
                    history_ts: Sequence[float] = (), now: float | None = None,
                    allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items, rule scores): ``ruled_selection`` over the best candidates ``await fetch(n)`` gives (item indices
    and scores, best first, only items the rules allow, of which ``available`` exist). n starts at ``first``
    (what Recommend asks the ranker for) and grows fourfold while a category cap leaves fewer than k and more
    items qualify, so k come back whenever k qualify, and while a kind's quota is short of items of that kind
    that qualify. ``await vectors_of(items)``: the candidates' item vectors, asked only for MMR. ``allowed``:
    ``allowed_mask`` of these arguments when the caller has it; computed once here otherwise, and used by every
    round's selection (the excluded items it leaves out are never candidates there either)."""
    n = min(int(first), int(available))
    if allowed is None:
        now = time.time() if now is None else float(now)  # the same time for the mask and the freshness
        allowed = allowed_mask(attrs, rules, history, exclude, history_ts, now)
    by_kind: dict[str, int] = {}
    if rules.kind_quota:
        kinds = attrs.kind[allowed]
        by_kind = {kind: int((kinds == kind).sum()) for kind in rules.kind_quota}
    while True:
        if n > 0:
            idx, scores = await fetch(n)
        else:
            idx, scores = np.zeros(0, np.int64), np.zeros(0)
        idx = np.asarray(idx, dtype=np.int64)
        vectors = None
        if rules.diversity == "mmr" and len(idx):
            if vectors_of is None:
                raise ValueError("diversity 'mmr' needs vectors_of")
            vectors = CandidateVectors(idx, await vectors_of(idx))
        items, picked = ruled_selection(scores, idx, attrs, rules, k, vectors, history, exclude, history_ts, now,
                                        allowed)
        if (len(items) >= k and not quota_short(items, attrs, rules, by_kind)) or n >= available:
            return items, picked
        n = min(int(available), 4 * max(n, 1))


def unanswerable(attrs: ItemAttributes, msg: pb.Rules) -> str | None:
    """Why this catalogue cannot answer the rules (a price filter over a catalogue without any price: every item
    would fail it), naming the field; None when it can."""
    if (msg.HasField("price_min") or msg.HasField("price_max")) and not np.isfinite(attrs.price).any():
        name = "price_min" if msg.HasField("price_min") else "price_max"
        return f"rules.{name}: the served catalogue has no item prices, so no item could pass a price filter"
    return None


def own_scores(items: np.ndarray, candidates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each of ``items``' own value among ``candidates`` (e.g. its similarity), 0 for an item not among them."""
    at = {int(i): float(v) for i, v in zip(np.asarray(candidates).tolist(), np.asarray(values).tolist())}
    return np.asarray([at.get(int(i), 0.0) for i in np.asarray(items).tolist()], dtype=np.float64)
