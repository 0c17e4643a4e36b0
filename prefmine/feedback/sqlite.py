"""The embedded feedback store: SQLite in WAL mode, for one node (one writer process, many readers).

Tables `feedback(id, user, item, event, ts, rating, received)` (`user` is the pseudonym; the raw id never reaches
the log) and `feedback_requests(key, digest, last_id, received)` (idempotency keys). `append` runs in one
BEGIN IMMEDIATE transaction committed with synchronous=FULL, so an acknowledged event survives a crash, and
writers of several processes on the same file take turns; `read_since` pages through events by id for
incremental jobs; `forget` erases one person's rows.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from prefmine.feedback.base import FeedbackEvent, FeedbackStoreConfig, check_key, conflict, events_digest

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    item TEXT NOT NULL,
    event TEXT NOT NULL,
    ts INTEGER NOT NULL,
    rating REAL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback(user);
CREATE TABLE IF NOT EXISTS feedback_requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_requests_received ON feedback_requests(received);
"""


class SqliteFeedbackStore:
    """A SQLite WAL database of feedback events (see the module docstring)."""

    def __init__(self, path: str | Path, create: bool = True, config: FeedbackStoreConfig | None = None):
        self.path = Path(path)
        self.config = config or FeedbackStoreConfig()
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"feedback log {self.path} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._keyed = 0

    def append(self, events: list[FeedbackEvent], idempotency_key: str | None = None) -> int:
        """Store events in one transaction; returns the id of the last one. Durable when this returns. With an
        idempotency key already stored for the same events, stores nothing and returns the first call's id."""
        key = check_key(idempotency_key)
        digest = events_digest(events) if key else None
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if key:
                row = self._db.execute("SELECT digest, last_id FROM feedback_requests WHERE key = ?",
                                       (key,)).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise conflict(key)
                    return int(row[1])
            self._db.executemany(
                "INSERT INTO feedback(user, item, event, ts, rating, received) VALUES (?, ?, ?, ?, ?, ?)",
                [(e.user, e.item, e.event, int(e.ts), e.rating, now) for e in events])
            last = int(self._db.execute("SELECT MAX(id) FROM feedback").fetchone()[0] or 0)
            if key:
                self._db.execute("INSERT INTO feedback_requests(key, digest, last_id, received) VALUES (?, ?, ?, ?)",
                                 (key, digest, last, now))
                self._keyed += 1
                if self._keyed % self.config.prune_every == 0:
                    self._db.execute("DELETE FROM feedback_requests WHERE received < ?",
                                     (now - self.config.key_retention_s,))
        return last

    def read_since(self, after_id: int = 0, limit: int = 100_000) -> list[tuple]:
        return self._db.execute("SELECT id, user, item, event, ts, rating FROM feedback WHERE id > ? ORDER BY id "
                                "LIMIT ?", (after_id, limit)).fetchall()

    def count(self, user: str | None = None) -> int:
        if user is None:
            return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM feedback WHERE user = ?", (user,)).fetchone()[0]

    def counts_by_event(self, user: str) -> dict[str, int]:
        """Stored events of one pseudonymous user by event name (GetUserProfile's activity counts)."""
        rows = self._db.execute("SELECT event, COUNT(*) FROM feedback WHERE user = ? GROUP BY event", (user,))
        return {str(e): int(n) for e, n in rows.fetchall()}

    def forget(self, user: str) -> int:
        """Delete every row of one pseudonymous user and checkpoint the WAL so the rows leave the disk too."""
        with self._db:
            n = self._db.execute("DELETE FROM feedback WHERE user = ?", (user,)).rowcount
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        return int(n)

    def close(self) -> None:
        self._db.close()
