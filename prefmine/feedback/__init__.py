"""The serving feedback log: events that RecordFeedback receives (view, click, cart, buy, rate), durably stored
before they are acknowledged, and readable by the policy update job while serving writes.

Two backends behind one interface (`FeedbackStore`): SQLite in WAL mode, the embedded default for one node
(`prefmine.feedback.sqlite`), and PostgreSQL for several ingress replicas on several nodes
(`prefmine.feedback.postgres`). `open_feedback_store(location)` picks one: a ``postgresql://`` (or
``postgres://``) URI opens PostgreSQL, anything else is a SQLite file path. Both accept an idempotency key per
append, so a retried request is stored once (`prefmine.feedback.base`), and both log impressions (what a
Recommend answer showed, with its propensities) that feedback events can name and be joined to. A store that
cannot write (disk full, I/O error, server gone) raises `StoreUnavailable` with its transaction rolled back.
"""

from __future__ import annotations

from pathlib import Path

from prefmine.feedback.base import (
    FeedbackEvent,
    FeedbackStore,
    FeedbackStoreConfig,
    IdempotencyConflict,
    Impression,
    StoreError,
    StoreUnavailable,
    check_impression_id,
)
from prefmine.feedback.sqlite import SqliteFeedbackStore

FeedbackLog = SqliteFeedbackStore  # the name the SQLite log had before PostgreSQL joined it

__all__ = ["FeedbackEvent", "FeedbackLog", "FeedbackStore", "FeedbackStoreConfig", "IdempotencyConflict",
           "Impression", "SqliteFeedbackStore", "StoreError", "StoreUnavailable", "check_impression_id", "is_dsn", "open_feedback_store", "resolve_location"]


def is_dsn(location: object) -> bool:
    """Whether a store location is a PostgreSQL connection URI (anything else is a SQLite path)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def resolve_location(location: str | Path) -> str:
    """A location in canonical form: a DSN unchanged, a path expanded and made absolute."""
    if is_dsn(location):
        return str(location)
    return str(Path(str(location)).expanduser().resolve())


def open_feedback_store(location: str | Path, create: bool = True,
                        config: FeedbackStoreConfig | None = None) -> FeedbackStore:
    """The store at `location` (a PostgreSQL URI or a SQLite path). With create=False, a store that does not
    exist yet (no file; no tables) raises FileNotFoundError instead of being created."""
    if is_dsn(location):
        from prefmine.feedback.postgres import PostgresFeedbackStore

        return PostgresFeedbackStore(str(location), create=create, config=config)
    return SqliteFeedbackStore(location, create=create, config=config)
