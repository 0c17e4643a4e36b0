"""API-key authentication, scopes and per-key rate limits of gRPC calls, from the call's metadata.

A client sends ``x-api-key: <key>`` (or ``authorization: Bearer <key>``). The server's key file holds no key,
only its SHA-256, one key a line::

    # name   scopes (RPC names, or *)        hash of the key
    shop-web Recommend,Search,RecordFeedback sha256:9f86d081884c7d65...

``*`` is every RPC except the writes that change what the shop sells or spends (``WRITE_RPCS``: WriteCatalog can
retire the whole catalogue, WriteCampaigns sets budgets that are paid out): a key may call those only when its
scope names them (``*,WriteCampaigns``), so a key handed out for reading never moves money or items.

``prefmine serve keys add --keys-file F --name N --scope Recommend,RecordFeedback`` makes a fresh random key,
appends its line and prints the key once (``add_key``). A line holding a plain key (the old format) is refused
with an error that says how to hash it, as is any other bad line, naming the line and the field. The file stays
out of config.yaml and out of Ray's runtime environment (keys show up neither in the repository nor on the
dashboard).

Every ingress replica re-reads the file when its modification time (or size, or inode) changes, looked at no
more than once a second, so a key added or revoked takes effect within about a second without a restart. On a
re-read, bad lines are dropped (logged with their line number) and every good line kept; a file that cannot be
read at all keeps the keys read last (logged), since a half-finished copy must not lock every client out.

Each key name has its own token bucket per ingress replica (``rate_per_s`` requests a second, ``burst`` at once);
beyond it the call is refused with ``RateLimited`` (RESOURCE_EXHAUSTED). The effective limit of a key is
therefore ``rate_per_s`` times the number of ingress replicas (autoscaling changes that number).

``AuthConfig(required=False)`` turns the check off (``prefmine serve --insecure``, the demo); the server logs
it. The health service is never checked (load balancers probe it without credentials).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("prefmine.serve.auth")

HEADER = "x-api-key"
HASH_PREFIX = "sha256:"
ALL_RPCS = "*"
# the RPCs of prefmine.v1.Recommender a key's scope may name
RPCS = ("Recommend", "Search", "Rank", "SimilarItems", "GetUserProfile", "RecordFeedback", "ModelInfo",
        "WriteCatalog", "WriteCampaigns")
# RPCs that `*` does not cover: a key's scope must name them
WRITE_RPCS = frozenset({"WriteCatalog", "WriteCampaigns"})
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_BYTES = 32  # a fresh key: 32 random bytes, URL-safe base64 (43 characters)
RELOAD_INTERVAL_S = 1.0
DEFAULT_RATE_PER_S = 100.0
DEFAULT_BURST = 200


class Unauthenticated(Exception):
    """No key, or not one of the server's keys; the message says which (never the key)."""


class PermissionDenied(Exception):
    """A valid key whose scope does not include the RPC called."""


class RateLimited(Exception):
    """The key's request rate is over its limit on this replica."""


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True)
class ApiKey:
    """One line of a key file: who (``name``), what it may call (``scopes``: RPC names, or ``*``: every RPC but
    the WRITE_RPCS, which only a scope naming them allows) and the SHA-256 of the key (hex)."""

    name: str
    scopes: frozenset[str]
    digest: str

    def allows(self, rpc: str) -> bool:
        return rpc in self.scopes or (ALL_RPCS in self.scopes and rpc not in WRITE_RPCS)


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a key (keys are random and long, so a plain hash is enough: nothing to brute-force)."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    """``Recommend,RecordFeedback`` or ``*``; raises ValueError naming the unknown RPC."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    if not scopes:
        raise ValueError("scope is empty (RPC names separated by commas, or *)")
    unknown = [s for s in scopes if s != ALL_RPCS and s not in RPCS]
    if unknown:
        raise ValueError(f"scope: unknown RPC {unknown[0]!r} (one of {', '.join(RPCS)}, or *)")
    return frozenset(scopes)


def parse_line(line: str) -> ApiKey:
    """One key-file line ``name scope1,scope2 sha256:<hex>``; raises ValueError naming the field."""
    parts = line.split()
    if len(parts) == 1:
        raise ValueError("a plain key, not its hash: replace the line with `NAME SCOPES sha256:<hex>` (make one "
                         "with `prefmine serve keys add`, or hash this key with `prefmine serve keys hash`)")
    if len(parts) != 3:
        raise ValueError(f"expected 3 fields `name scopes sha256:<hex>`, got {len(parts)}")
    name, scopes, digest = parts
    if not NAME_RE.match(name):
        raise ValueError(f"name {name[:70]!r}: 1-64 characters of letters, digits, _ . @ -, starting with a "
                         f"letter or digit")
    if not digest.startswith(HASH_PREFIX) or not HEX_RE.match(digest[len(HASH_PREFIX):]):
        raise ValueError("hash must be sha256: followed by 64 lowercase hex digits")
    return ApiKey(name, parse_scopes(scopes), digest[len(HASH_PREFIX):])


def parse_keys(text: str, source: str = "api_keys_file") -> tuple[list[ApiKey], list[str]]:
    """Every good line of a key file, and one error per bad line (``<source>: line N: <field> ...``); a second
    line with a name or hash already seen is an error too. ``#`` comments and blank lines are skipped."""
    keys: list[ApiKey] = []
    errors: list[str] = []
    names: set[str] = set()
    digests: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = parse_line(line)
            if key.name in names:
                raise ValueError(f"name {key.name!r} is used by an earlier line")
            if key.digest in digests:
                raise ValueError("hash: the same key is on an earlier line")
        except ValueError as e:
            errors.append(f"{source}: line {n}: {e}")
            continue
        names.add(key.name)
        digests.add(key.digest)
        keys.append(key)
    return keys, errors


def load_keys(path: str | Path) -> list[ApiKey]:
    """The keys of a key file, strictly: raises KeyFileError listing every bad line, or FileNotFoundError.
    A file with no key is an error here (a server that nobody could call); for start-up checks."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"api_keys_file: {p} does not exist")
    keys, errors = parse_keys(p.read_text(), f"api_keys_file {p}")
    if errors:
        raise KeyFileError("; ".join(errors))
    if not keys:
        raise KeyFileError(f"api_keys_file {p}: holds no key (add one with `prefmine serve keys add`)")
    return keys


def add_key(path: str | Path, name: str, scopes: str) -> str:
    """A fresh random key: its line (name, scopes, hash) appended to the key file (created with mode 0600 when
    missing); returns the key, which is stored nowhere (print it once). Refuses a name already in the file and
    a file with bad lines (fix those first)."""
    p = Path(path)
    line = f"{name} {','.join(sorted(parse_scopes(scopes)))} "  # checks the scopes
    if not NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: 1-64 characters of letters, digits, _ . @ -")
    existing = p.read_text() if p.exists() else ""
    keys, errors = parse_keys(existing, f"api_keys_file {p}")
    if errors:
        raise KeyFileError("; ".join(errors))
    if any(k.name == name for k in keys):
        raise ValueError(f"--name {name!r} is already in {p} (remove its line to revoke it, then add it again)")
    key = secrets.token_urlsafe(KEY_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        if existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write(line + hash_key(key) + "\n")
    return key


@dataclass
class AuthConfig:
    """``keys_file``: the server's hashed keys; ``required``: False only with --insecure (then no file is needed);
    ``rate_per_s``/``burst``: each key's token bucket per ingress replica (``rate_per_s`` 0: no limit);
    ``extra_keys``: key-file lines held besides the file's and not rate-limited (``prefmine serve``'s own
    readiness and rollout probe, whose plain key only that process knows)."""

    keys_file: str | None = None
    required: bool = True
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: int = DEFAULT_BURST
    extra_keys: tuple[str, ...] = ()

    def __post_init__(self):
        if self.required and not self.keys_file:
            raise ValueError("auth: api_keys_file is required unless auth is off (--insecure / "
                             "require_api_key: false)")
        if not (self.rate_per_s >= 0 and self.rate_per_s != float("inf")):
            raise ValueError(f"auth: rate_per_s must be a number >= 0 (0: no limit), got {self.rate_per_s}")
        if self.rate_per_s > 0 and int(self.burst) < 1:
            raise ValueError(f"auth: burst must be >= 1, got {self.burst}")


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take(now)`` spends one if there is one."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    last: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:  # a new bucket starts full
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ApiKeyCheck:
    """``check(metadata, rpc)`` returns the caller's ApiKey, or raises Unauthenticated (no or unknown key),
    PermissionDenied (the RPC is not in its scope) or RateLimited (over its rate on this replica)."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.required = config.required
        self.clock = clock
        self.extra: list[ApiKey] = [parse_line(line) for line in config.extra_keys]
        self.keys: list[ApiKey] = (load_keys(config.keys_file) + self.extra) if config.required else []
        self.buckets: dict[str, TokenBucket] = {}
        self._stamp = self._file_stamp() if config.required else None
        self._next_look = clock() + RELOAD_INTERVAL_S

    def _file_stamp(self):
        st = os.stat(self.config.keys_file)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def maybe_reload(self) -> bool:
        """Re-read the key file if it changed (looked at once a second at most); True when keys were re-read."""
        now = self.clock()
        if now < self._next_look:
            return False
        self._next_look = now + RELOAD_INTERVAL_S
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            keys, errors = parse_keys(Path(self.config.keys_file).read_text(),
                                      f"api_keys_file {self.config.keys_file}")
        except OSError as e:
            logger.error("api_keys_file %s cannot be read (%s); keeping the %d keys read before",
                         self.config.keys_file, e, len(self.keys))
            return False
        for err in errors:
            logger.error("%s (line ignored)", err)
        self._stamp, self.keys = stamp, keys + [k for k in self.extra if k.name not in {x.name for x in keys}]
        names = {k.name for k in self.keys}
        self.buckets = {n: b for n, b in self.buckets.items() if n in names}
        logger.info("api_keys_file %s re-read: %d keys, %d bad lines ignored", self.config.keys_file, len(keys),
                    len(errors))
        return True

    @staticmethod
    def presented(metadata) -> str | None:
        for name, value in metadata or ():
            name = name.lower()
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if name == HEADER:
                return value
            if name == "authorization" and value.lower().startswith("bearer "):
                return value[7:].strip()
        return None

    def identify(self, metadata) -> ApiKey:
        """The key the metadata carries, or Unauthenticated."""
        presented = self.presented(metadata)
        if not presented:
            raise Unauthenticated(f"missing API key: send metadata '{HEADER}: <key>'")
        given = hashlib.sha256(presented.encode(errors="replace")).hexdigest()
        # looked up by its hash: what a lookup's timing could tell is about the SHA-256 of the key, not the key
        found = self._by_digest.get(given)
        if found is None or not hmac.compare_digest(given, found.digest):
            raise Unauthenticated("invalid API key")
        return found

    @property
    def keys(self) -> list[ApiKey]:
        return list(self._by_digest.values())

    @keys.setter
    def keys(self, keys: list[ApiKey]) -> None:
        self._by_digest = {k.digest: k for k in keys}

    def check(self, metadata, rpc: str) -> ApiKey | None:
        if not self.required:
            return None
        self.maybe_reload()
        key = self.identify(metadata)
        if not key.allows(rpc):
            raise PermissionDenied(f"API key {key.name!r} may not call {rpc} (its scope: "
                                   f"{','.join(sorted(key.scopes))})")
        if self.config.rate_per_s > 0 and key not in self.extra:  # the server's own probe is not limited
            bucket = self.buckets.get(key.name)
            if bucket is None:
                bucket = self.buckets[key.name] = TokenBucket(float(self.config.rate_per_s),
                                                              float(self.config.burst))
            if not bucket.take(self.clock()):
                raise RateLimited(f"API key {key.name!r} is over its rate limit ({self.config.rate_per_s:g} "
                                  f"requests/s, burst {self.config.burst}, per ingress replica); retry later")
        return key
