"""The tombstone list: pseudonyms of people who were erased, so that nothing brings them back.

`prefmine data forget` erases a person's rows from a dataset, the feedback store and marks bundles, but their
history lives on elsewhere: in the bundle a server holds, in raw files a later `data prepare` reads again, in a
copy of a dataset a training job loads. The tombstone list is what all of those consult: serving treats a
tombstoned pseudonym as erased (no history, no profile, no new feedback), `prepare` and `load_dataset` drop its
rows.

The list is a small append-only text file, one pseudonym (32 hex characters) a line. Every `add` writes the
whole new file aside, fsyncs it, renames it over the old one and fsyncs the folder, so a reader sees the old
list or the new one, never half a line. Its location: given explicitly (`--tombstones`), else
$PREFMINE_TOMBSTONES, else ``<feedback store path>.tombstones`` beside a SQLite feedback store, so `forget` and
the server that writes that store agree on it without configuration. Beside a PostgreSQL feedback store the list
is a table of that database (`PostgresTombstoneList`, table ``tombstones``): ingress replicas on several nodes
share the store, so they see every erasure without a shared file system. A location is a path or a
``postgresql://`` DSN; `open_list` gives the right kind.

`TombstoneWatcher` is the reader a long-running process (a serving replica) keeps: it re-reads the list when its
stamp changed (file: modification time, size, inode; table: row count and last sequence number), checking at most once every `interval_s`, so an erasure takes effect within
that interval without a restart.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

ENV = "PREFMINE_TOMBSTONES"
SUFFIX = ".tombstones"
_PSEUDONYM = re.compile(r"[0-9a-f]{32}")


class TombstoneError(ValueError):
    """A malformed tombstone file or pseudonym (the message names the file and line)."""


def is_dsn(location) -> bool:
    """Whether a location is a PostgreSQL DSN (the list is then a table of that database)."""
    return str(location).startswith(("postgresql://", "postgres://"))


def _absolute(location: str | Path) -> Path | str:
    return str(location) if is_dsn(location) else Path(str(location)).expanduser().resolve()


def default_location(feedback: str | Path | None = None) -> Path | str | None:
    """$PREFMINE_TOMBSTONES, else beside the feedback store (a SQLite store: the file ``<store>.tombstones``; a
    PostgreSQL store: its DSN, the table in the same database), else None (no list)."""
    if os.environ.get(ENV):
        return _absolute(os.environ[ENV])
    if feedback and is_dsn(feedback):
        return str(feedback)
    if feedback:
        p = Path(str(feedback)).expanduser().resolve()
        return p.with_name(p.name + SUFFIX)
    return None


def resolve(location: str | Path | None, feedback: str | Path | None = None) -> Path | str | None:
    """An explicit location made absolute (a DSN as it is), or the default for `feedback`."""
    if location:
        return _absolute(location)
    return default_location(feedback)


def open_list(location: str | Path) -> TombstoneList | PostgresTombstoneList:
    """The tombstone list at a location: a table for a PostgreSQL DSN, else a file."""
    return PostgresTombstoneList(str(location)) if is_dsn(location) else TombstoneList(location)


def check_pseudonym(p: str) -> str:
    if not isinstance(p, str) or not _PSEUDONYM.fullmatch(p):
        raise TombstoneError(f"pseudonym: expected 32 lowercase hex characters, got {str(p)[:40]!r}")
    return p


class TombstoneList:
    """The file of erased pseudonyms at `path` (it may not exist yet: then the list is empty)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> frozenset[str]:
        """Every pseudonym in the file; a malformed line is an error naming the file and line."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return frozenset()
        except UnicodeDecodeError as e:
            raise TombstoneError(f"{self.path}: not an ASCII list of pseudonyms ({e})") from e
        out = set()
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.add(check_pseudonym(line))
            except TombstoneError as e:
                raise TombstoneError(f"{self.path}, line {n}: {e}") from None
        return frozenset(out)

    def contains(self, pseudonym: str) -> bool:
        return pseudonym in self.load()

    def stamp(self) -> tuple | None:
        """Changes whenever the file does (None: no file yet)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def add(self, pseudonyms) -> int:
        """Append the pseudonyms not yet listed (atomically, durably); returns how many were new."""
        new = [check_pseudonym(p) for p in dict.fromkeys(pseudonyms)]
        have = self.load()
        new = [p for p in new if p not in have]
        if not new:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = self.path.read_bytes() if self.path.is_file() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(old + "".join(p + "\n" for p in new).encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)
        return len(new)


class PostgresTombstoneList:
    """The tombstone list as the table ``tombstones`` of a PostgreSQL database (the feedback store's), created
    on first use. Same interface as `TombstoneList`. Rows are only ever inserted (an erasure is never undone);
    `add` commits with synchronous_commit on, so a listed erasure survives a crash of the database server."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS tombstones (
        pseudonym TEXT PRIMARY KEY CHECK (pseudonym ~ '^[0-9a-f]{32}$'),
        seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        added DOUBLE PRECISION NOT NULL
    )"""

    def __init__(self, dsn: str, connect_timeout_s: int = 10):
        self.dsn, self.connect_timeout_s = dsn, connect_timeout_s
        self._conn = None
        self.path = dsn  # where the list is, for messages

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s)
            self._conn.execute("SET synchronous_commit = on")
            self._conn.execute(self.SCHEMA)
        return self._conn

    def _run(self, fn):
        """``fn(connection)``, once more on a fresh connection when the kept one was lost."""
        import psycopg

        try:
            return fn(self._connection())
        except psycopg.OperationalError:
            self.close()
            return fn(self._connection())

    def load(self) -> frozenset[str]:
        return frozenset(r[0] for r in self._run(lambda c: c.execute("SELECT pseudonym FROM tombstones").fetchall()))

    def contains(self, pseudonym: str) -> bool:
        return bool(self._run(lambda c: c.execute("SELECT 1 FROM tombstones WHERE pseudonym = %s",
                                                  (pseudonym,)).fetchone()))

    def stamp(self) -> tuple:
        return tuple(self._run(lambda c: c.execute("SELECT count(*), max(seq) FROM tombstones").fetchone()))

    def add(self, pseudonyms) -> int:
        """Insert the pseudonyms not yet listed, in one transaction; returns how many were new."""
        new = [check_pseudonym(p) for p in dict.fromkeys(pseudonyms)]
        if not new:
            return 0

        def insert(conn) -> int:
            n = 0
            with conn.transaction():
                for p in new:
                    n += conn.execute("INSERT INTO tombstones (pseudonym, added) VALUES (%s, %s) "
                                      "ON CONFLICT (pseudonym) DO NOTHING", (p, time.time())).rowcount
            return n

        return self._run(insert)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class TombstoneWatcher:
    """A cached view of a tombstone list, re-read when the file changes (checked at most every `interval_s`).

    A file that turns malformed keeps the last good list (and the error is returned by `refresh` for logging):
    an erasure is never undone by a bad write."""

    def __init__(self, path: str | Path | None, interval_s: float = 2.0):
        self.list = open_list(path) if path else None
        self.interval_s = float(interval_s)
        self._erased: frozenset[str] = frozenset()
        self._stamp: tuple | None = None
        self._checked = -float("inf")
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> Exception | None:
        if self.list is None:
            return None
        now = time.monotonic()
        if not force and now - self._checked < self.interval_s:
            return None
        self._checked = now
        try:
            stamp = self.list.stamp()
            if stamp == self._stamp and not force:
                return None
            erased = self.list.load()
        except Exception as e:  # noqa: BLE001 - unreadable now (I/O, a bad line, the database away): keep the last list
            return e
        self._erased, self._stamp = erased | self._erased, stamp
        return None

    def __contains__(self, pseudonym: str) -> bool:
        self.refresh()
        return pseudonym in self._erased

    def __len__(self) -> int:
        return len(self._erased)
