"""Keyed pseudonymisation of user ids (HMAC-SHA256).

Raw user ids never reach a table, model or log: they are replaced at preparation time by
HMAC-SHA256(key, raw_id) truncated to 16 bytes (hex). The key comes from PREFMINE_PSEUDONYM_KEY or the file named
by PREFMINE_PSEUDONYM_KEY_FILE, and is never written into a dataset or bundle; only a fingerprint (sha256 of the
key, 8 hex chars) is recorded so serving can check it pseudonymises with the same key the data was prepared with.
Without a key, the demo key is used and a warning says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from pathlib import Path

DEMO_KEY = b"prefmine-demo-key-not-for-production"


def load_key() -> bytes:
    """The pseudonymisation key from the environment, else the demo key (with a warning)."""
    if os.environ.get("PREFMINE_PSEUDONYM_KEY"):
        return os.environ["PREFMINE_PSEUDONYM_KEY"].encode()
    key_file = os.environ.get("PREFMINE_PSEUDONYM_KEY_FILE")
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"PREFMINE_PSEUDONYM_KEY_FILE={key_file} does not exist")
        return path.read_bytes().strip()
    warnings.warn("no PREFMINE_PSEUDONYM_KEY set: using the demo pseudonymisation key", stacklevel=2)
    return DEMO_KEY


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"fingerprint:" + key).hexdigest()[:8]


class Pseudonymiser:
    """Maps raw user ids to stable keyed pseudonyms."""

    def __init__(self, key: bytes | None = None):
        self.key = key if key is not None else load_key()
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
