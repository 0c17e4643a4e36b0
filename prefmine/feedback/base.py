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


@runtime_checkable
class FeedbackStore(Protocol):
    """A durable, append-only log of feedback events with increasing ids, readable while it is written.

    `append` returns only after the events are committed durably (all of them or none); its result is the id of
    the last stored event. Ids become visible in increasing order, so `read_since(last_seen)` never skips a row.
    """

    def append(self, events: list[FeedbackEvent], idempotency_key: str | None = None) -> int: ...

    def read_since(self, after_id: int = 0, limit: int = 100_000) -> list[tuple]: ...

    def count(self, user: str | None = None) -> int: ...

    def counts_by_event(self, user: str) -> dict[str, int]: ...

    def forget(self, user: str) -> int: ...

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
    rows = [[e.user, e.item, e.event, int(e.ts), None if e.rating is None else float(e.rating)] for e in events]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"idempotency_key {key!r} was already used for different events")
