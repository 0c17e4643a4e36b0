"""What every feedback store shares: the event record, the `FeedbackStore` protocol, the store's config and the
idempotency-key rules.

An append carries an optional idempotency key (one per RecordFeedback request). The first append with a key
stores its events and remembers (key, digest of the events, id of the last event); a later append with the same
key and the same events stores nothing and returns that same id, so a client that retries after a lost answer
(timeout, replica or server restart) gets its events stored once. The same key with different events is a client
bug and is refused (`IdempotencyConflict`) rather than silently answered with another request's result.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

MAX_KEY_CHARS = 256


@dataclass
class FeedbackEvent:
    user: str  # pseudonym
    item: str
    event: str
    ts: int
    rating: float | None = None
    impression_id: str | None = None  # the Recommend answer this event responds to, if the client named one


@dataclass
class Impression:
    """What one Recommend answer showed, logged before the answer left the server.

    items[j] was shown at positions[j] (0-based index in RecommendResponse.items) with propensities[j], the
    probability that the serving policy put that item in that slot given the slots before it (1.0 for a
    deterministic policy: greedy, popularity). `user` is the pseudonym, `ts` the serving time (Unix seconds),
    `arm` the A/B arm the user was assigned to (prefmine.experiments; "" when no experiment ran), `received`
    when the store committed it; `seq` increases with commit order (`read_impressions_since`).
    """

    impression_id: str
    user: str
    ts: int
    items: list[str]
    positions: list[int]
    propensities: list[float]
    policy: str
    bundle_version: str
    arm: str = ""
    received: float = 0.0
    seq: int = 0


MAX_IMPRESSION_ID_CHARS = 64
_IMPRESSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def check_impression_id(value: object, field: str = "impression_id") -> str:
    """`value` if it is a valid impression id (1..64 characters of [A-Za-z0-9-]), else ValueError naming field."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    if not _IMPRESSION_ID.fullmatch(value):
        raise ValueError(f"{field} must be 1..{MAX_IMPRESSION_ID_CHARS} characters of A-Z, a-z, 0-9 and '-', "
                         f"got {value[:20]!r}{'...' if len(value) > 20 else ''}")
    return value


def check_impression(imp: Impression) -> Impression:
    """The impression if its fields agree (same lengths, finite propensities in (0, 1]), else ValueError."""
    check_impression_id(imp.impression_id)
    n = len(imp.items)
    for name in ("positions", "propensities"):
        if len(getattr(imp, name)) != n:
            raise ValueError(f"{name} has {len(getattr(imp, name))} entries for {n} items")
    for j, p in enumerate(imp.propensities):
        if not (isinstance(p, (int, float)) and 0.0 < float(p) <= 1.0):
            raise ValueError(f"propensities[{j}] must be in (0, 1], got {p!r}")
    return imp


def impression_row(imp: Impression) -> tuple:
    """(impression_id, user, ts, items, positions, propensities, policy, bundle_version, arm) with JSON lists."""
    return (imp.impression_id, imp.user, int(imp.ts), json.dumps([str(i) for i in imp.items]),
            json.dumps([int(p) for p in imp.positions]), json.dumps([float(p) for p in imp.propensities]),
            str(imp.policy), str(imp.bundle_version), str(imp.arm or ""))


def impression_from_row(row) -> Impression:
    """Inverse of `impression_row` plus (received, seq); lists may come back as JSON text or as lists."""
    iid, user, ts, items, positions, props, policy, version, arm, received, seq = row

    def load(v) -> list:
        return json.loads(v) if isinstance(v, str) else list(v)

    return Impression(impression_id=str(iid), user=str(user), ts=int(ts), items=[str(i) for i in load(items)],
                      positions=[int(p) for p in load(positions)], propensities=[float(p) for p in load(props)],
                      policy=str(policy), bundle_version=str(version), arm=str(arm or ""),
                      received=float(received), seq=int(seq))


@dataclass
class FeedbackStoreConfig:
    """Settings of a feedback store (the PostgreSQL pool fields are ignored by SQLite).

    key_retention_s: how long an idempotency key is remembered; a retry later than this is stored again.
    Expired keys are pruned by appends now and then (every `prune_every` keyed appends of one store object).
    """

    key_retention_s: float = 7 * 86400.0
    prune_every: int = 1000
    pool_min_size: int = 1
    pool_max_size: int = 4
    pool_timeout_s: float = 30.0  # waiting for a pooled connection, and for the first one at open


class IdempotencyConflict(ValueError):
    """An idempotency key already used for different events."""


class StoreError(RuntimeError):
    """A feedback store failed for a reason of its own, not of the caller's input."""


class StoreUnavailable(StoreError):
    """The store cannot take writes now (disk full, an I/O error, read-only, the server unreachable). The call's
    transaction was rolled back, so nothing of it is acknowledged; the caller retries later (the serving layer
    answers UNAVAILABLE). Only a connection lost during COMMIT leaves it unknown whether the rows were stored: a
    retry with the same idempotency key then stores them once either way."""


@runtime_checkable
class FeedbackStore(Protocol):
    """A durable, append-only log of feedback events with increasing ids, readable while it is written.

    `append` returns only after the events are committed durably (all of them or none); its result is the id of
    the last stored event. Ids become visible in increasing order, so `read_since(last_seen)` never skips a row.

    Impressions (what Recommend showed) live beside the events: `append_impression` is durable on return like
    `append` and returns the impression's seq (an impression id already stored is refused with ValueError);
    `recent_for_user(user, limit, after_ts)` gives one user's newest events, those after `after_ts` only when
    given (serving's same-session history: one query on the user's index);
    `read_impressions_since(seq)` pages through them in commit order; `feedback_for_impressions(ids)` gives,
    per impression id, the stored events that name it (rows as `read_since`, oldest first). `forget` erases a
    user's impressions with their events. `append_catalog(changes, key)` logs live-catalogue changes
    (`prefmine.catalog`), durable on return, idempotent per key like `append`; `read_catalog_since(id)` pages them
    in commit order. `ads` holds the ad tables (prefmine.feedback.ads_ledger.AdLedger: campaigns, daily spend, ad
    impressions with their budget holds), the same interface on both backends.
    """

    ads: object  # prefmine.feedback.ads_ledger.AdLedger

    def append(self, events: list[FeedbackEvent], idempotency_key: str | None = None) -> int: ...

    def read_since(self, after_id: int = 0, limit: int = 100_000) -> list[tuple]: ...

    def count(self, user: str | None = None) -> int: ...

    def counts_by_event(self, user: str) -> dict[str, int]: ...

    def recent_for_user(self, user: str, limit: int = 50, after_ts: int | None = None) -> list[tuple]: ...

    def forget(self, user: str) -> int: ...

    def append_catalog(self, changes: list, idempotency_key: str | None = None) -> int: ...

    def read_catalog_since(self, after_id: int = 0, limit: int = 100_000) -> list: ...

    def append_impression(self, impression: Impression) -> int: ...

    def read_impressions_since(self, after_seq: int = 0, limit: int = 100_000) -> list[Impression]: ...

    def feedback_for_impressions(self, impression_ids: list[str]) -> dict[str, list[tuple]]: ...

    def close(self) -> None: ...


def check_key(key: str | None) -> str | None:
    """The key to use (None: no idempotency), or ValueError naming the field."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise ValueError(f"idempotency_key must be a string, got {type(key).__name__}")
    if not key.strip():
        raise ValueError("idempotency_key must not be only whitespace")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"idempotency_key is {len(key)} characters long, at most {MAX_KEY_CHARS}")
    return key


def events_digest(events: list[FeedbackEvent]) -> str:
    """A digest of the events' content, to tell a true retry from a reused key."""
    rows = [[e.user, e.item, e.event, int(e.ts), None if e.rating is None else float(e.rating)]
            + ([e.impression_id] if e.impression_id else []) for e in events]  # unchanged digest without one
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def conflict(key: str, what: str = "events") -> IdempotencyConflict:
    return IdempotencyConflict(f"idempotency_key {key!r} was already used for different {what}")
