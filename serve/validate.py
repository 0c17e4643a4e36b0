"""Request validation for every RPC of prefmine.v1.Recommender: limits, and errors that name the field.

Each ``validate_*`` raises ``BadRequest("<field> ...")`` (the message starts with the field's path, e.g.
``events[3].type``) and returns nothing; the ingress turns it into INVALID_ARGUMENT. The limits are the ones
documented in protos/prefmine/v1/recommender.proto; they keep one request's work and memory bounded so a
malformed or hostile request cannot take a replica down. Messages quote at most a few bytes of the bad value
(a 1 MB id is not echoed back).
"""

from __future__ import annotations

import math
import time

from prefmine.ads.campaigns import check_campaign_id
from prefmine.feedback.base import check_impression_id
from prefmine.v1 import recommender_pb2 as pb

K_MAX = 1000
MAX_ID_BYTES = 256
MAX_EXCLUDE = 10_000
MAX_RECENT_EVENTS = 10_000
MAX_CANDIDATES = 10_000
MAX_FEEDBACK_EVENTS = 1000
MAX_QUERY_BYTES = 1024
MAX_PLACEMENT_BYTES = 64
MAX_RULE_ENTRIES = 100  # per list of Rules (categories, brands, kinds, boosts, pins)
MAX_BOOST = 100.0  # |weight| of a boost, in standard deviations
MAX_REPURCHASE_GAP_S = 100 * 365 * 86400.0  # a repurchase gap, seconds
BOOST_KINDS = ("category", "brand", "item")
MIN_TIMESTAMP = 631_152_000  # 1990-01-01T00:00:00Z, as the data preparation's bad-row rules
FUTURE_SLACK_S = 86_400  # clocks differ; a day ahead is accepted, more is a bug on the client
RATING_RANGE = (1.0, 5.0)
EVENT_NAMES = {
    pb.EVENT_TYPE_VIEW: "view",
    pb.EVENT_TYPE_CLICK: "click",
    pb.EVENT_TYPE_CART: "cart",
    pb.EVENT_TYPE_BUY: "buy",
    pb.EVENT_TYPE_RATE: "rate",
}


class BadRequest(ValueError):
    """A request field is invalid; the message starts with the field's name."""


def check_id(value: str, field: str) -> None:
    """A raw user or item id: 1..MAX_ID_BYTES bytes, not only whitespace."""
    if not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise BadRequest(f"{field} is {size} bytes long, at most {MAX_ID_BYTES}")


def check_k(k: int, field: str = "k") -> None:
    if not 1 <= k <= K_MAX:
        raise BadRequest(f"{field} must be in 1..{K_MAX}, got {k}")


def check_count(n: int, field: str, most: int, least: int = 0) -> None:
    if n > most:
        raise BadRequest(f"{field} has {n} entries, at most {most}")
    if n < least:
        raise BadRequest(f"{field} must have at least {least} entr{'y' if least == 1 else 'ies'}, got {n}")


def check_timestamp(ts: int, field: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if ts < MIN_TIMESTAMP:
        raise BadRequest(f"{field} must be Unix seconds from 1990-01-01 on, got {ts}")
    if ts > now + FUTURE_SLACK_S:
        raise BadRequest(f"{field} is {ts}, more than a day in the future (server time {int(now)})")


def check_event(ev: pb.Event, field: str, need_user: bool, now: float | None = None) -> None:
    if need_user:
        check_id(ev.user_id, f"{field}.user_id")
    check_id(ev.item_id, f"{field}.item_id")
    if ev.type not in EVENT_NAMES:
        raise BadRequest(
            f"{field}.type must be one of {sorted(pb.EventType.Name(t) for t in EVENT_NAMES)}, got {ev.type}"
        )
    check_timestamp(ev.timestamp, f"{field}.timestamp", now)
    if ev.type == pb.EVENT_TYPE_RATE:
        lo, hi = RATING_RANGE
        if not (math.isfinite(ev.rating) and lo <= ev.rating <= hi):
            raise BadRequest(f"{field}.rating must be in {lo:g}..{hi:g} for EVENT_TYPE_RATE, got {ev.rating}")
    elif ev.rating != 0:
        raise BadRequest(f"{field}.rating must be unset except for EVENT_TYPE_RATE, got {ev.rating}")


def check_rules(rules: pb.Rules, k: int, field: str = "rules", history: bool = True) -> None:
    """A request's Rules: list sizes and names, the price range, boosts, pins (positions 0..k-1, unique), the
    diversity settings and the repurchase gaps (only where the RPC has a user history: ``history``); each error
    names the field, e.g. ``rules.pins[2].position``."""
    check_count(len(rules.repurchase_gap_s), f"{field}.repurchase_gap_s", MAX_RULE_ENTRIES)
    if len(rules.repurchase_gap_s) and not history:
        raise BadRequest(f"{field}.repurchase_gap_s is for Recommend only (this RPC has no user history)")
    for cat in sorted(rules.repurchase_gap_s):
        where = f"{field}.repurchase_gap_s: key {cat[:64]!r}"
        if not cat.strip() or len(cat.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise BadRequest(f"{where} must be a category name of 1..{MAX_ID_BYTES} bytes")
        gap = rules.repurchase_gap_s[cat]
        if not (math.isfinite(gap) and 0 <= gap <= MAX_REPURCHASE_GAP_S):
            raise BadRequest(f"{where}: the gap must be finite seconds in 0..{MAX_REPURCHASE_GAP_S:g}, got {gap}")
    for name in ("categories", "brands", "kinds"):
        values = getattr(rules, name)
        check_count(len(values), f"{field}.{name}", MAX_RULE_ENTRIES)
        for i, v in enumerate(values):
            check_id(v, f"{field}.{name}[{i}]")
    for name in ("price_min", "price_max"):
        if rules.HasField(name):
            v = getattr(rules, name)
            if not (math.isfinite(v) and v >= 0):
                raise BadRequest(f"{field}.{name} must be a finite number >= 0, got {v}")
    if rules.HasField("price_min") and rules.HasField("price_max") and rules.price_min > rules.price_max:
        raise BadRequest(f"{field}.price_min ({rules.price_min}) is above {field}.price_max ({rules.price_max})")
    check_count(len(rules.boosts), f"{field}.boosts", MAX_RULE_ENTRIES)
    for key in sorted(rules.boosts):  # named "rules.boosts: key '...'" (a map has no positions to name)
        kind, _, name = key.partition(":")
        where = f"{field}.boosts: key {key[:64]!r}"
        if kind not in BOOST_KINDS or not name.strip():
            raise BadRequest(f"{where} must be category:NAME, brand:NAME or item:ID")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise BadRequest(f"{where} names more than {MAX_ID_BYTES} bytes")
        w = rules.boosts[key]
        if not (math.isfinite(w) and abs(w) <= MAX_BOOST):
            raise BadRequest(f"{where}: the weight must be finite, in -{MAX_BOOST:g}..{MAX_BOOST:g}, got {w}")
    check_count(len(rules.pins), f"{field}.pins", MAX_RULE_ENTRIES)
    positions: set[int] = set()
    for i, pin in enumerate(rules.pins):
        check_id(pin.item_id, f"{field}.pins[{i}].item_id")
        if not 0 <= pin.position < k:
            raise BadRequest(f"{field}.pins[{i}].position must be in 0..k-1 ({k - 1}), got {pin.position}")
        if pin.position in positions:
            raise BadRequest(f"{field}.pins[{i}].position {pin.position} is pinned twice")
        positions.add(pin.position)
    check_count(len(rules.kind_quota), f"{field}.kind_quota", MAX_RULE_ENTRIES)
    for kind in sorted(rules.kind_quota):
        check_id(kind, f"{field}.kind_quota: key {kind[:64]!r}")
        if not 1 <= rules.kind_quota[kind] <= K_MAX:
            raise BadRequest(f"{field}.kind_quota: key {kind[:64]!r}: the quota must be 1..{K_MAX} slots, "
                             f"got {rules.kind_quota[kind]}")
    half_life = rules.freshness_half_life_s
    if not (math.isfinite(half_life) and 0 <= half_life <= MAX_REPURCHASE_GAP_S):
        raise BadRequest(f"{field}.freshness_half_life_s must be finite seconds in 0..{MAX_REPURCHASE_GAP_S:g}, "
                         f"got {half_life}")
    if rules.diversity not in pb.Diversity.values():
        raise BadRequest(f"{field}.diversity must be one of {list(pb.Diversity.keys())}, got {rules.diversity}")
    if rules.HasField("mmr_lambda"):
        lam = rules.mmr_lambda
        if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
            raise BadRequest(f"{field}.mmr_lambda must be in 0..1, got {lam}")
        if rules.diversity != pb.DIVERSITY_MMR:
            raise BadRequest(f"{field}.mmr_lambda is only allowed with DIVERSITY_MMR")
    if rules.diversity == pb.DIVERSITY_CATEGORY_CAP:
        if not 1 <= rules.category_cap <= K_MAX:
            raise BadRequest(f"{field}.category_cap must be in 1..{K_MAX} with DIVERSITY_CATEGORY_CAP, "
                             f"got {rules.category_cap}")
    elif rules.category_cap != 0:
        raise BadRequest(f"{field}.category_cap must be unset (0) unless diversity is DIVERSITY_CATEGORY_CAP, "
                         f"got {rules.category_cap}")


def validate_request(request: pb.RecommendRequest) -> None:
    """Recommend."""
    check_id(request.user_id, "user_id")
    check_k(request.k)
    check_count(len(request.exclude_item_ids), "exclude_item_ids", MAX_EXCLUDE)
    check_count(len(request.recent_events), "recent_events", MAX_RECENT_EVENTS)
    size = len(request.placement.encode("utf-8", "surrogatepass"))
    if size > MAX_PLACEMENT_BYTES:
        raise BadRequest(f"placement is {size} bytes long, at most {MAX_PLACEMENT_BYTES}")
    now = time.time()
    for i, ev in enumerate(request.recent_events):
        check_event(ev, f"recent_events[{i}]", need_user=False, now=now)
    if request.HasField("rules"):
        check_rules(request.rules, request.k)


def validate_search(request: pb.SearchRequest) -> None:
    check_id(request.user_id, "user_id")
    if not request.query.strip():
        raise BadRequest("query must be a non-empty string")
    size = len(request.query.encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_BYTES:
        raise BadRequest(f"query is {size} bytes long, at most {MAX_QUERY_BYTES}")
    check_k(request.k)
    if request.HasField("rules"):
        check_rules(request.rules, request.k, history=False)


def validate_rank(request: pb.RankRequest) -> None:
    check_id(request.user_id, "user_id")
    n = len(request.candidate_item_ids)
    check_count(n, "candidate_item_ids", MAX_CANDIDATES, least=1)
    for i, item in enumerate(request.candidate_item_ids):
        check_id(item, f"candidate_item_ids[{i}]")
    if request.bids:
        if len(request.bids) != n:
            raise BadRequest(f"bids has {len(request.bids)} entries; it must be empty or have one per "
                             f"candidate_item_ids entry ({n})")
        for i, bid in enumerate(request.bids):
            if not (math.isfinite(bid) and bid >= 0):
                raise BadRequest(f"bids[{i}] must be a finite number >= 0, got {bid}")
    if request.campaign_ids:
        if len(request.campaign_ids) != n:
            raise BadRequest(f"campaign_ids has {len(request.campaign_ids)} entries; it must be empty or have one "
                             f"per candidate_item_ids entry ({n})")
        for i, c in enumerate(request.campaign_ids):
            if c:  # "" is an organic candidate
                try:
                    check_campaign_id(c, f"campaign_ids[{i}]")
                except ValueError as e:
                    raise BadRequest(str(e)) from None


def validate_similar(request: pb.SimilarItemsRequest) -> None:
    check_id(request.item_id, "item_id")
    check_k(request.k)
    if request.HasField("rules"):
        check_rules(request.rules, request.k, history=False)


def validate_profile(request: pb.GetUserProfileRequest) -> None:
    check_id(request.user_id, "user_id")


def validate_feedback(request: pb.RecordFeedbackRequest) -> None:
    check_count(len(request.events), "events", MAX_FEEDBACK_EVENTS, least=1)
    if request.idempotency_key:
        check_id(request.idempotency_key, "idempotency_key")
    now = time.time()
    for i, ev in enumerate(request.events):
        check_event(ev, f"events[{i}]", need_user=True, now=now)
        if ev.impression_id:  # optional; when set, the form Recommend's ids have (and nothing a store could misread)
            try:
                check_impression_id(ev.impression_id, f"events[{i}].impression_id")
            except ValueError as e:
                raise BadRequest(str(e)) from None
