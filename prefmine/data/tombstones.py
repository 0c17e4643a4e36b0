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
the server that writes that store agree on it without configuration. A PostgreSQL feedback store has no file to
sit beside: give the file explicitly (a shared file system) -- a table in the store is a TODO.

`TombstoneWatcher` is the reader a long-running process (a serving replica) keeps: it re-reads the file when its
modification time or size changed, checking at most once every `interval_s`, so an erasure takes effect within
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


def default_location(feedback: str | Path | None = None) -> Path | None:
    """$PREFMINE_TOMBSTONES, else the file beside a SQLite feedback store, else None (no list)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().resolve()
    if feedback and not str(feedback).startswith(("postgresql://", "postgres://")):
        p = Path(str(feedback)).expanduser().resolve()
        return p.with_name(p.name + SUFFIX)
    return None


def resolve(location: str | Path | None, feedback: str | Path | None = None) -> Path | None:
    """An explicit location made absolute, or the default for `feedback`."""
    if location:
        return Path(str(location)).expanduser().resolve()
    return default_location(feedback)


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


class TombstoneWatcher:
    """A cached view of a tombstone list, re-read when the file changes (checked at most every `interval_s`).

    A file that turns malformed keeps the last good list (and the error is returned by `refresh` for logging):
    an erasure is never undone by a bad write."""

    def __init__(self, path: str | Path | None, interval_s: float = 2.0):
        self.list = TombstoneList(path) if path else None
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
            st = self.list.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return None
        try:
            erased = self.list.load()
        except (OSError, TombstoneError) as e:
            return e
        self._erased, self._stamp = erased | self._erased, stamp
        return None

    def __contains__(self, pseudonym: str) -> bool:
        self.refresh()
        return pseudonym in self._erased

    def __len__(self) -> int:
        return len(self._erased)
