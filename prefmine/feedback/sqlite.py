"""The embedded feedback store: SQLite in WAL mode, for one node (one writer process, many readers).

Tables `feedback(id, user, item, event, ts, rating, received, impression_id)` (`user` is the pseudonym; the raw id never reaches
the log), `feedback_requests(key, digest, last_id, received)` (idempotency keys) and `impressions(seq,
impression_id, user, ts, items, positions, propensities, policy, bundle_version, arm, received)` (lists as JSON
text; what Recommend showed), `catalog_changes(id, item, op, fields, received)` with `catalog_requests` (the live
catalogue's change log and its idempotency keys, `prefmine.catalog`; a file from before them gains both tables
when opened), and the ad tables of `prefmine.feedback.ads_ledger` (campaigns, spend, ad impressions with their
budget holds: `store.ads`). A file from before impressions gains the `impression_id` column when opened (NULL
for its old rows), one from before A/B arms `impressions.arm` ('' for its old rows). `append` runs in one
BEGIN IMMEDIATE transaction committed with synchronous=FULL, so an acknowledged event survives a crash, and
writers of several processes on the same file take turns; `read_since` pages through events by id for
incremental jobs; `forget` erases one person's rows. A write that fails for want of space or I/O (SQLITE_FULL,
SQLITE_IOERR, read-only, locked past the timeout, ENOSPC) is rolled back and raised as `StoreUnavailable`, so the
caller never acknowledges a row the file does not hold.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefmine.catalog.rows import CatalogChange, change_from_row, change_row, changes_digest
from prefmine.feedback.ads_ledger import AdLedger
from prefmine.feedback.ads_ledger import schema as ads_schema
from prefmine.feedback.base import (
    FeedbackEvent,
    FeedbackStoreConfig,
    Impression,
    StoreUnavailable,
    check_impression,
    check_key,
    conflict,
    events_digest,
    impression_from_row,
    impression_row,
)

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
CREATE TABLE IF NOT EXISTS impressions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    impression_id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    ts INTEGER NOT NULL,
    items TEXT NOT NULL,
    positions TEXT NOT NULL,
    propensities TEXT NOT NULL,
    policy TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    arm TEXT NOT NULL DEFAULT '',
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions(user);
CREATE TABLE IF NOT EXISTS catalog_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    op TEXT NOT NULL,
    fields TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    received REAL NOT NULL
);
"""
# after the migration below (a file from before impressions has no impression_id column to index yet)
INDEXES = "CREATE INDEX IF NOT EXISTS feedback_impression ON feedback(impression_id);"


# primary result codes (the low byte of an extended code) that mean "cannot write now", not "bad input"
UNAVAILABLE_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
                     sqlite3.SQLITE_CANTOPEN}
UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def is_unavailable(e: BaseException) -> bool:
    """Whether a failed write means the store cannot write now (space, I/O, lock), rather than a bad row."""
    if isinstance(e, OSError):
        return e.errno in UNAVAILABLE_ERRNOS
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.Error) and code is not None and (code & 0xFF) in UNAVAILABLE_CODES


def migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older prefmine up to the current schema: feedback.impression_id (NULL for the
    rows already there) and impressions.arm ('' for the impressions already there: logged without an experiment)."""
    cols = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
    if "impression_id" not in cols:
        db.execute("ALTER TABLE feedback ADD COLUMN impression_id TEXT")
    if "arm" not in {row[1] for row in db.execute("PRAGMA table_info(impressions)")}:
        db.execute("ALTER TABLE impressions ADD COLUMN arm TEXT NOT NULL DEFAULT ''")


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
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # two processes opening an old file: one migrates
            migrate(self._db)
        self._db.executescript(INDEXES)
        for stmt in ads_schema("REAL"):  # the ad tables (prefmine.feedback.ads_ledger); an older file gains them
            self._db.execute(stmt)
        self.ads = AdLedger(self._ads_write, self._ads_read)
        self._keyed = 0

    @contextmanager
    def _ads_write(self) -> Iterator:
        with self._write():
            yield self._db.execute

    @contextmanager
    def _ads_read(self) -> Iterator:
        yield self._db.execute

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One BEGIN IMMEDIATE transaction, committed on exit (synchronous=FULL: durable then). A failure to write
        rolls it back and raises StoreUnavailable; any other error propagates as it is (rolled back too)."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield
        except (sqlite3.Error, OSError) as e:
            if not is_unavailable(e):
                raise
            if self._db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL); make sure
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StoreUnavailable(f"feedback log {self.path} cannot be written ({e}); nothing was stored, "
                                   "retry later") from e

    def append(self, events: list[FeedbackEvent], idempotency_key: str | None = None) -> int:
        """Store events in one transaction; returns the id of the last one. Durable when this returns. With an
        idempotency key already stored for the same events, stores nothing and returns the first call's id."""
        key = check_key(idempotency_key)
        digest = events_digest(events) if key else None
        now = time.time()
        with self._write():
            if key:
                row = self._db.execute("SELECT digest, last_id FROM feedback_requests WHERE key = ?",
                                       (key,)).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise conflict(key)
                    return int(row[1])
            self._db.executemany(
                "INSERT INTO feedback(user, item, event, ts, rating, received, impression_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.user, e.item, e.event, int(e.ts), e.rating, now, e.impression_id or None) for e in events])
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

    def recent_for_user(self, user: str, limit: int = 50, after_ts: int | None = None) -> list[tuple]:
        """The user's newest stored events, oldest first, at most `limit` (rows as `read_since`), only those with
        ts > `after_ts` when given: what serving adds to the bundle's history so that feedback changes the next
        answer without a new bundle. One search of the `feedback_user` index, which holds the rowid (= id), so
        the newest rows come first without a sort."""
        if after_ts is None:
            rows = self._db.execute("SELECT id, user, item, event, ts, rating FROM feedback WHERE user = ? "
                                    "ORDER BY id DESC LIMIT ?", (user, int(limit))).fetchall()
        else:
            rows = self._db.execute("SELECT id, user, item, event, ts, rating FROM feedback WHERE user = ? "
                                    "AND ts > ? ORDER BY id DESC LIMIT ?", (user, int(after_ts), int(limit))).fetchall()
        return rows[::-1]

    def counts_by_event(self, user: str) -> dict[str, int]:
        """Stored events of one pseudonymous user by event name (GetUserProfile's activity counts)."""
        rows = self._db.execute("SELECT event, COUNT(*) FROM feedback WHERE user = ? GROUP BY event", (user,))
        return {str(e): int(n) for e, n in rows.fetchall()}

    def append_impression(self, impression: Impression) -> int:
        """Store one impression; returns its seq. Durable when this returns (synchronous=FULL commit). An
        impression id already stored raises ValueError (ids are uuid4s: a repeat is a bug, not a retry)."""
        row = impression_row(check_impression(impression))
        try:
            with self._write():
                cur = self._db.execute(
                    "INSERT INTO impressions(impression_id, user, ts, items, positions, propensities, policy, "
                    "bundle_version, arm, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, time.time()))
                return int(cur.lastrowid)
        except sqlite3.IntegrityError as e:
            raise ValueError(f"impression_id {impression.impression_id!r} is already stored") from e

    def read_impressions_since(self, after_seq: int = 0, limit: int = 100_000) -> list[Impression]:
        rows = self._db.execute(
            "SELECT impression_id, user, ts, items, positions, propensities, policy, bundle_version, arm, received, "
            "seq FROM impressions WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [impression_from_row(r) for r in rows]

    def feedback_for_impressions(self, impression_ids: list[str]) -> dict[str, list[tuple]]:
        """Per impression id, the stored events naming it (rows as `read_since`, by id); [] for none."""
        out: dict[str, list[tuple]] = {str(i): [] for i in impression_ids}
        ids = list(out)
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                    f"SELECT id, user, item, event, ts, rating, impression_id FROM feedback "
                    f"WHERE impression_id IN ({marks}) ORDER BY id", chunk):
                out[row[6]].append(tuple(row[:6]))
        return out

    def append_catalog(self, changes: list[CatalogChange], idempotency_key: str | None = None) -> int:
        """Log validated catalogue changes in one transaction; returns the id of the last one (durable when this
        returns). A key already stored for the same changes stores nothing and returns the first call's id."""
        key = check_key(idempotency_key)
        digest = changes_digest(changes) if key else None
        now = time.time()
        with self._write():
            if key:
                row = self._db.execute("SELECT digest, last_id FROM catalog_requests WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise conflict(key, "catalogue changes")
                    return int(row[1])
            self._db.executemany("INSERT INTO catalog_changes(item, op, fields, received) VALUES (?, ?, ?, ?)",
                                 [(*change_row(c), now) for c in changes])
            last = int(self._db.execute("SELECT MAX(id) FROM catalog_changes").fetchone()[0] or 0)
            if key:
                self._db.execute("INSERT INTO catalog_requests(key, digest, last_id, received) VALUES (?, ?, ?, ?)",
                                 (key, digest, last, now))
                self._db.execute("DELETE FROM catalog_requests WHERE received < ?", (now - self.config.key_retention_s,))
        return last

    def read_catalog_since(self, after_id: int = 0, limit: int = 100_000) -> list[CatalogChange]:
        """Catalogue changes with id > after_id, in id order (what serving replicas poll)."""
        rows = self._db.execute("SELECT id, item, op, fields, received FROM catalog_changes WHERE id > ? ORDER BY id "
                                "LIMIT ?", (after_id, limit)).fetchall()
        return [change_from_row(r) for r in rows]

    def forget(self, user: str) -> int:
        """Delete every row of one pseudonymous user (events and impressions) and checkpoint the WAL so the rows
        leave the disk too. Returns the number of events deleted."""
        with self._db:
            n = self._db.execute("DELETE FROM feedback WHERE user = ?", (user,)).rowcount
            self._db.execute("DELETE FROM impressions WHERE user = ?", (user,))
            self.ads.forget(self._db.execute, user)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        return int(n)

    def close(self) -> None:
        self._db.close()
