"""The shared feedback store: PostgreSQL, for several ingress replicas on several nodes writing one log.

Same tables and behaviour as the SQLite store (`feedback`, `feedback_requests`, `impressions`, the impression
lists as JSONB, and the live catalogue's `catalog_changes` and `catalog_requests`, the ad tables of prefmine.feedback.ads_ledger), created on first use; a store from before impressions gains `feedback.impression_id`, one from
before A/B arms `impressions.arm`. Every
connection of the psycopg pool runs with synchronous_commit=on, and each append is one transaction, so an
acknowledged append is in the server's flushed WAL and survives a crash of the writer or of the server.

Appends take a transaction-scoped advisory lock: ids are then assigned and committed in the same order, so a
reader paging with `read_since(last_seen)` never skips a row that committed late with a lower id (the policy
update job relies on that), and a retry with an idempotency key racing its own first attempt on another replica
waits for it and returns its result. The price is one commit at a time, as with SQLite.

A write the server cannot take (disk full, an I/O error, a read-only standby, the server or the pool's connections
gone) leaves its transaction rolled back and raises `StoreUnavailable`: nothing unstored is acknowledged.

`forget` deletes the rows and runs a plain VACUUM (it does not block writers); the rows then stay only in WAL
segments and backups until those rotate, which the erasure policy must cover.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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

# pg_advisory_xact_lock keys (any bigint; these spell "prefmine" roughly and only need to be fixed)
SCHEMA_LOCK = 0x7072_6566_0001
APPEND_LOCK = 0x7072_6566_0002
IMPRESSION_LOCK = 0x7072_6566_0003
CATALOG_LOCK = 0x7072_6566_0004
AD_PAIR_LOCK = 0x7072_6605  # the first key of the two-key (int4, int4) advisory locks of ad holds

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS feedback (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        "user" TEXT NOT NULL,
        item TEXT NOT NULL,
        event TEXT NOT NULL,
        ts BIGINT NOT NULL,
        rating DOUBLE PRECISION,
        received DOUBLE PRECISION NOT NULL
    )""",
    'CREATE INDEX IF NOT EXISTS feedback_user ON feedback ("user")',
    """CREATE TABLE IF NOT EXISTS feedback_requests (
        key TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        last_id BIGINT NOT NULL,
        received DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_requests_received ON feedback_requests (received)",
    # a store created before impressions: the column is added, NULL for the rows already there
    "ALTER TABLE feedback ADD COLUMN IF NOT EXISTS impression_id TEXT",
    "CREATE INDEX IF NOT EXISTS feedback_impression ON feedback (impression_id)",
    """CREATE TABLE IF NOT EXISTS impressions (
        impression_id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        "user" TEXT NOT NULL,
        ts BIGINT NOT NULL,
        items JSONB NOT NULL,
        positions JSONB NOT NULL,
        propensities JSONB NOT NULL,
        policy TEXT NOT NULL,
        bundle_version TEXT NOT NULL,
        arm TEXT NOT NULL DEFAULT '',
        received DOUBLE PRECISION NOT NULL
    )""",
    'CREATE INDEX IF NOT EXISTS impressions_user ON impressions ("user")',
    # a store created before A/B arms: its impressions were logged without an experiment ('')
    "ALTER TABLE impressions ADD COLUMN IF NOT EXISTS arm TEXT NOT NULL DEFAULT ''",
    # the live catalogue's change log (prefmine.catalog); a store from before it gains both tables
    """CREATE TABLE IF NOT EXISTS catalog_changes (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        item TEXT NOT NULL,
        op TEXT NOT NULL,
        fields JSONB NOT NULL,
        received DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS catalog_requests (
        key TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        last_id BIGINT NOT NULL,
        received DOUBLE PRECISION NOT NULL
    )""",
    # the ad tables (prefmine.feedback.ads_ledger); a store from before them gains them
    *ads_schema("DOUBLE PRECISION"),
]


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - unparsable: say nothing of its content
        return "postgresql://<unparsable DSN>"
    host, port, db = parts.get("host", ""), parts.get("port", ""), parts.get("dbname", "")
    user = parts.get("user", "")
    return f"postgresql://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}/{db}"


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """psycopg errors that mean "the store cannot write now": OperationalError covers class 53 (DiskFull,
    OutOfMemory, TooManyConnections), class 58 (IoError), 57 (shutdown) and lost connections or a pool timeout;
    ReadOnlySqlTransaction is a standby or a read-only database."""
    import psycopg
    from psycopg import errors

    return (psycopg.OperationalError, errors.ReadOnlySqlTransaction)


class _Run:
    """A transaction's connection that is also the ad ledger's execute function (``run(sql, params)``)."""

    def __init__(self, conn):
        self._conn = conn

    def __call__(self, sql: str, params: tuple = ()):
        return self._conn.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _lock_pair(run, user: str, campaign: str) -> None:
    """Holds of one (user, campaign) take turns (the frequency cap's count and insert are then one step)."""
    run("SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (AD_PAIR_LOCK, f"{user}\x1f{campaign}"))


def _configure(conn) -> None:
    conn.execute("SET synchronous_commit = on")
    conn.commit()


class PostgresFeedbackStore:
    """A PostgreSQL feedback log behind a psycopg connection pool (see the module docstring)."""

    def __init__(self, dsn: str, create: bool = True, config: FeedbackStoreConfig | None = None):
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.dsn, self.config = dsn, config or FeedbackStoreConfig()
        self.location = redact(dsn)
        cfg = self.config
        self._pool = ConnectionPool(dsn, min_size=cfg.pool_min_size, max_size=cfg.pool_max_size,
                                    timeout=cfg.pool_timeout_s, configure=_configure,
                                    check=ConnectionPool.check_connection, name="prefmine-feedback", open=False)
        self._pool.open()
        try:
            self._pool.wait(timeout=cfg.pool_timeout_s)
        except PoolTimeout as e:
            self._pool.close()
            raise ConnectionError(f"feedback store {self.location}: no connection within "
                                  f"{cfg.pool_timeout_s:g} s") from e
        self._keyed = 0
        self._unavailable = unavailable_errors()
        self.ads = AdLedger(self._write, self._ads_read, mark="%s", lock_pair=_lock_pair)
        try:
            with self._pool.connection() as conn, conn.transaction():
                if not create:
                    for table in ("feedback", "feedback_requests"):
                        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                            raise FileNotFoundError(f"feedback store {self.location} has no table {table}")
                # an existing store is brought up to the current schema either way (impressions, impression_id)
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for stmt in SCHEMA:
                    conn.execute(stmt)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _ads_read(self) -> Iterator:
        with self._pool.connection() as conn:
            yield conn.execute

    @contextmanager
    def _write(self) -> Iterator:
        """A pooled connection in one transaction, committed on exit; a failure to write (the transaction is then
        rolled back, or never committed) raises StoreUnavailable."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _Run(conn)
        except self._unavailable as e:
            raise StoreUnavailable(f"feedback store {self.location} cannot be written "
                                   f"({type(e).__name__}: {str(e).strip()[:200]}); nothing was stored, retry later") from e

    def append(self, events: list[FeedbackEvent], idempotency_key: str | None = None) -> int:
        """Store events in one transaction; returns the id of the last one. Durable when this returns. With an
        idempotency key already stored for the same events, stores nothing and returns the first call's id."""
        key = check_key(idempotency_key)
        digest = events_digest(events) if key else None
        now = time.time()
        with self._write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            if key:
                row = conn.execute("SELECT digest, last_id FROM feedback_requests WHERE key = %s", (key,)).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise conflict(key)
                    return int(row[1])
            if events:
                cols = list(zip(*[(e.user, e.item, e.event, int(e.ts), e.rating, e.impression_id or None)
                                  for e in events]))
                last = conn.execute(
                    'WITH ins AS (INSERT INTO feedback ("user", item, event, ts, rating, impression_id, received) '
                    "SELECT u, i, ev, t, r, imp, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], "
                    "%s::float8[], %s::text[]) AS x(u, i, ev, t, r, imp) RETURNING id) SELECT max(id) FROM ins",
                    (now, *[list(c) for c in cols])).fetchone()[0]
            else:
                last = conn.execute("SELECT max(id) FROM feedback").fetchone()[0]
            last = int(last or 0)
            if key:
                conn.execute("INSERT INTO feedback_requests (key, digest, last_id, received) VALUES (%s, %s, %s, %s)",
                             (key, digest, last, now))
                self._keyed += 1
                if self._keyed % self.config.prune_every == 0:
                    conn.execute("DELETE FROM feedback_requests WHERE received < %s",
                                 (now - self.config.key_retention_s,))
        return last

    def read_since(self, after_id: int = 0, limit: int = 100_000) -> list[tuple]:
        with self._pool.connection() as conn:
            rows = conn.execute('SELECT id, "user", item, event, ts, rating FROM feedback WHERE id > %s ORDER BY id '
                                "LIMIT %s", (after_id, limit)).fetchall()
        return [tuple(r) for r in rows]

    def count(self, user: str | None = None) -> int:
        with self._pool.connection() as conn:
            if user is None:
                return int(conn.execute("SELECT count(*) FROM feedback").fetchone()[0])
            return int(conn.execute('SELECT count(*) FROM feedback WHERE "user" = %s', (user,)).fetchone()[0])

    def recent_for_user(self, user: str, limit: int = 50, after_ts: int | None = None) -> list[tuple]:
        """The user's newest stored events, oldest first, at most `limit` (rows as `read_since`), only those with
        ts > `after_ts` when given. One scan of the `feedback_user` index."""
        with self._pool.connection() as conn:
            rows = conn.execute('SELECT id, "user", item, event, ts, rating FROM feedback WHERE "user" = %s '
                                "AND ts > %s ORDER BY id DESC LIMIT %s",
                                (user, -(2 ** 63) if after_ts is None else int(after_ts), int(limit))).fetchall()
        return [tuple(r) for r in rows[::-1]]

    def counts_by_event(self, user: str) -> dict[str, int]:
        """Stored events of one pseudonymous user by event name (GetUserProfile's activity counts)."""
        with self._pool.connection() as conn:
            rows = conn.execute('SELECT event, count(*) FROM feedback WHERE "user" = %s GROUP BY event',
                                (user,)).fetchall()
        return {str(e): int(n) for e, n in rows}

    def append_impression(self, impression: Impression) -> int:
        """Store one impression in its own transaction; returns its seq. Durable when this returns. Seqs commit
        in order (an advisory lock of their own, not the events'), so `read_impressions_since` skips none. An
        impression id already stored raises ValueError."""
        from psycopg import errors

        row = impression_row(check_impression(impression))
        try:
            with self._write() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPRESSION_LOCK,))
                seq = conn.execute(
                    'INSERT INTO impressions (impression_id, "user", ts, items, positions, propensities, policy, '
                    "bundle_version, arm, received) VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s, %s) "
                    "RETURNING seq", (*row, time.time())).fetchone()[0]
        except errors.UniqueViolation as e:
            raise ValueError(f"impression_id {impression.impression_id!r} is already stored") from e
        return int(seq)

    def read_impressions_since(self, after_seq: int = 0, limit: int = 100_000) -> list[Impression]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                'SELECT impression_id, "user", ts, items, positions, propensities, policy, bundle_version, arm, '
                "received, seq FROM impressions WHERE seq > %s ORDER BY seq LIMIT %s", (after_seq, limit)).fetchall()
        return [impression_from_row(r) for r in rows]

    def feedback_for_impressions(self, impression_ids: list[str]) -> dict[str, list[tuple]]:
        """Per impression id, the stored events naming it (rows as `read_since`, by id); [] for none."""
        out: dict[str, list[tuple]] = {str(i): [] for i in impression_ids}
        if not out:
            return out
        with self._pool.connection() as conn:
            rows = conn.execute('SELECT id, "user", item, event, ts, rating, impression_id FROM feedback '
                                "WHERE impression_id = ANY(%s::text[]) ORDER BY id", (list(out),)).fetchall()
        for row in rows:
            out[row[6]].append(tuple(row[:6]))
        return out

    def append_catalog(self, changes: list[CatalogChange], idempotency_key: str | None = None) -> int:
        """Log validated catalogue changes in one transaction; returns the id of the last one (durable when this
        returns). Ids commit in order (an advisory lock of their own), so a replica polling
        `read_catalog_since(last_seen)` skips none. A key already stored for the same changes stores nothing and
        returns the first call's id."""
        key = check_key(idempotency_key)
        digest = changes_digest(changes) if key else None
        now = time.time()
        with self._write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CATALOG_LOCK,))
            if key:
                row = conn.execute("SELECT digest, last_id FROM catalog_requests WHERE key = %s", (key,)).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise conflict(key, "catalogue changes")
                    return int(row[1])
            if changes:
                cols = [list(c) for c in zip(*[change_row(c) for c in changes])]
                last = conn.execute(
                    "WITH ins AS (INSERT INTO catalog_changes (item, op, fields, received) "
                    "SELECT i, o, f::jsonb, %s FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY "
                    "AS x(i, o, f, n) ORDER BY n RETURNING id) SELECT max(id) FROM ins", (now, *cols)).fetchone()[0]
            else:
                last = conn.execute("SELECT max(id) FROM catalog_changes").fetchone()[0]
            last = int(last or 0)
            if key:
                conn.execute("INSERT INTO catalog_requests (key, digest, last_id, received) VALUES (%s, %s, %s, %s)",
                             (key, digest, last, now))
                conn.execute("DELETE FROM catalog_requests WHERE received < %s", (now - self.config.key_retention_s,))
        return last

    def read_catalog_since(self, after_id: int = 0, limit: int = 100_000) -> list[CatalogChange]:
        """Catalogue changes with id > after_id, in id order (what serving replicas poll)."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT id, item, op, fields, received FROM catalog_changes WHERE id > %s ORDER BY id "
                                "LIMIT %s", (after_id, limit)).fetchall()
        return [change_from_row(r) for r in rows]

    def forget(self, user: str) -> int:
        """Delete every row of one pseudonymous user (events and impressions), then VACUUM the tables so their
        space is reclaimed. Returns the number of events deleted."""
        with self._pool.connection() as conn:
            with conn.transaction():
                n = conn.execute('DELETE FROM feedback WHERE "user" = %s', (user,)).rowcount
                conn.execute('DELETE FROM impressions WHERE "user" = %s', (user,))
                self.ads.forget(conn.execute, user)
            conn.commit()
            conn.autocommit = True  # VACUUM cannot run inside a transaction block
            try:
                conn.execute("VACUUM feedback")
                conn.execute("VACUUM impressions")
            finally:
                conn.autocommit = False
        return int(n)

    def close(self) -> None:
        self._pool.close()
