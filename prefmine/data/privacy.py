"""Keyed pseudonymisation of user ids (HMAC-SHA256), and the one id normalisation every path shares.

Raw user ids never reach a table, model or log: they are replaced at preparation time by
HMAC-SHA256(key, raw_id) truncated to 16 bytes (hex). The key comes from PREFMINE_PSEUDONYM_KEY or the file named
by PREFMINE_PSEUDONYM_KEY_FILE, and is never written into a dataset or bundle; only a fingerprint (sha256 of the
key, 8 hex chars) is recorded so serving can check it pseudonymises with the same key the data was prepared with.
A configured key shorter than `MIN_KEY_BYTES` is refused: a short key can be guessed, and with it every pseudonym
reversed by hashing candidate ids. A missing key is an error, except on the demo path (`prefmine demo`,
`prefmine data prepare --demo-key`) where a fixed, public demo key is used with a warning; such data is throwaway by
construction, and serving accepts the demo key only for bundles whose data was prepared with it.

`normalise_id` (surrounding whitespace stripped, Unicode NFC) is applied to every raw id before it is checked or
pseudonymised: by every source reader, by `data forget` and by serving, through `Pseudonymiser` itself, so the same
person typed as "é" (one code point) or "e" + combining accent, or with a trailing space, has one pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
import warnings
from pathlib import Path

DEMO_KEY = b"prefmine-demo-key-not-for-production"
MIN_KEY_BYTES = 16


class MissingKeyError(ValueError):
    """No pseudonymisation key configured outside the demo path."""


class WeakKeyError(ValueError):
    """The configured pseudonymisation key is too short to keep pseudonyms from being reversed."""


def normalise_id(raw_id) -> str:
    """The canonical form of a raw id: Unicode NFC, surrounding whitespace stripped (Python's `str.strip`)."""
    return unicodedata.normalize("NFC", str(raw_id)).strip()


def normalise_ids(raw_ids) -> list[str]:
    """`normalise_id` of each id of a column (catalogue, event log), fast: in a column that is all ASCII only the
    strip can change anything (NFC leaves ASCII as it is), and nothing at all without whitespace or controls;
    otherwise each distinct id is normalised once."""
    values = list(raw_ids)
    try:
        joined = "".join(values)
    except TypeError:
        values = [str(v) for v in values]
        joined = "".join(values)
    if joined.isascii():
        return values if not _ASCII_SPACE.search(joined) else [v.strip() for v in values]
    done = {v: normalise_id(v) for v in dict.fromkeys(values)}
    return [done[v] for v in values]


_ASCII_SPACE = re.compile("[\\x00-\\x20\\x7f]")  # every ASCII character `str.strip` removes is in here


def _checked(key: bytes, origin: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise WeakKeyError(f"{origin}: the pseudonymisation key is {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                           "required (a short key lets anyone reverse pseudonyms by hashing candidate ids); use a "
                           "long random secret, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
    return key


def load_key(allow_demo: bool = False) -> bytes:
    """The pseudonymisation key from the environment; the demo key (with a warning) only if `allow_demo`."""
    if os.environ.get("PREFMINE_PSEUDONYM_KEY"):
        return _checked(os.environ["PREFMINE_PSEUDONYM_KEY"].encode(), "PREFMINE_PSEUDONYM_KEY")
    key_file = os.environ.get("PREFMINE_PSEUDONYM_KEY_FILE")
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"PREFMINE_PSEUDONYM_KEY_FILE={key_file} does not exist")
        return _checked(path.read_bytes().strip(), f"PREFMINE_PSEUDONYM_KEY_FILE={key_file}")
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
    """Maps raw user ids to stable keyed pseudonyms; ids are normalised first (`normalise_id`)."""

    def __init__(self, key: bytes | None = None, allow_demo: bool = False):
        self.key = key if key is not None else load_key(allow_demo)
        self.fingerprint = key_fingerprint(self.key)

    def __call__(self, raw_id: str) -> str:
        return hmac.new(self.key, normalise_id(raw_id).encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()[:32]

    def many(self, raw_ids) -> list[str]:
        cache: dict[str, str] = {}
        out = []
        for r in raw_ids:
            p = cache.get(r)
            if p is None:
                p = cache[r] = self(r)
            out.append(p)
        return out
