"""Keyed pseudonymisation of user ids (HMAC-SHA256).

Raw user ids never reach a table, model or log: they are replaced at preparation time by
HMAC-SHA256(key, raw_id) truncated to 16 bytes (hex). The key comes from PREFMINE_PSEUDONYM_KEY or the file named
by PREFMINE_PSEUDONYM_KEY_FILE, and is never written into a dataset or bundle; only a fingerprint (sha256 of the
key, 8 hex chars) is recorded so serving can check it pseudonymises with the same key the data was prepared with.
A missing key is an error, except on the demo path (`prefmine demo`, `prefmine data prepare --demo-key`) where
a fixed, public demo key is used with a warning; such data is throwaway by construction, and serving accepts the
demo key only for bundles whose data was prepared with it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from pathlib import Path

DEMO_KEY = b"prefmine-demo-key-not-for-production"


class MissingKeyError(ValueError):
    """No pseudonymisation key configured outside the demo path."""


def load_key(allow_demo: bool = False) -> bytes:
    """The pseudonymisation key from the environment; the demo key (with a warning) only if `allow_demo`."""
    if os.environ.get("PREFMINE_PSEUDONYM_KEY"):
        return os.environ["PREFMINE_PSEUDONYM_KEY"].encode()
    key_file = os.environ.get("PREFMINE_PSEUDONYM_KEY_FILE")
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"PREFMINE_PSEUDONYM_KEY_FILE={key_file} does not exist")
        return path.read_bytes().strip()
    if not allow_demo:
        raise MissingKeyError("no pseudonymisation key: set PREFMINE_PSEUDONYM_KEY or PREFMINE_PSEUDONYM_KEY_FILE "
                              "(a secret kept outside the data; only its fingerprint is recorded), or pass "
                              "--demo-key for throwaway demo data")
    warnings.warn("no PREFMINE_PSEUDONYM_KEY set: using the public demo pseudonymisation key", stacklevel=2)
    return DEMO_KEY


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"fingerprint:" + key).hexdigest()[:8]


DEMO_FINGERPRINT = key_fingerprint(DEMO_KEY)


class Pseudonymiser:
    """Maps raw user ids to stable keyed pseudonyms."""

    def __init__(self, key: bytes | None = None, allow_demo: bool = False):
        self.key = key if key is not None else load_key(allow_demo)
        self.fingerprint = key_fingerprint(self.key)

    def __call__(self, raw_id: str) -> str:
        return hmac.new(self.key, str(raw_id).encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]

    def many(self, raw_ids) -> list[str]:
        cache: dict[str, str] = {}
        out = []
        for r in raw_ids:
            p = cache.get(r)
            if p is None:
                p = cache[r] = self(r)
            out.append(p)
        return out
