"""The serving feedback log: events that RecordFeedback receives (view, click, cart, buy, rate), durably stored in
SQLite in WAL mode before they are acknowledged, and readable by the policy update job while serving writes.

One table, `feedback(id, user, item, event, ts, rating, received)`; `user` is the pseudonym (the raw id never
reaches the log). `append` commits with synchronous=FULL, so an acknowledged event survives a crash; `read_since`
pages through events by id for incremental jobs; `forget` erases one person's rows.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass
class FeedbackEvent:
    user: str  # pseudonym
    item: str
    event: str
    ts: int
    rating: float | None = None


class FeedbackLog:
    """A SQLite WAL database of feedback events; safe for one writer process and many readers."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"feedback log {self.path} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def append(self, events: list[FeedbackEvent]) -> int:
        """Store events in one transaction; returns the id of the last one. Durable when this returns."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO feedback(user, item, event, ts, rating, received) VALUES (?, ?, ?, ?, ?, ?)",
                [(e.user, e.item, e.event, int(e.ts), e.rating, now) for e in events])
            last = self._db.execute("SELECT MAX(id) FROM feedback").fetchone()[0]
        return int(last or 0)

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
