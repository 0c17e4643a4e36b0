"""API-key authentication of gRPC calls, from the call's metadata.

A client sends ``x-api-key: <key>`` (or ``authorization: Bearer <key>``). The server holds its keys in a file
(one key per line, ``#`` comments and blank lines ignored; the file stays out of config.yaml and out of Ray's
runtime environment, so keys show up neither in the repository nor on the dashboard) and compares in constant
time. ``AuthConfig(required=False)`` turns the check off: for the local demo only, and the server logs it.
The health service is never checked (load balancers probe it without credentials).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

HEADER = "x-api-key"
MIN_KEY_CHARS = 16


class Unauthenticated(Exception):
    """No key, or not one of the server's keys; the message says which (never the key)."""


@dataclass
class AuthConfig:
    """``keys_file``: the server's keys; ``required``: False only for the demo (then no file is needed)."""

    keys_file: str | None = None
    required: bool = True

    def __post_init__(self):
        if self.required and not self.keys_file:
            raise ValueError("auth: api_keys_file is required unless auth is off (require_api_key: false, demo "
                             "only)")


def load_keys(path: str | Path) -> list[bytes]:
    """Keys of a key file; an error names the file when it is missing, empty or holds a too-short key."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"api_keys_file: {p} does not exist")
    keys = [line.strip() for line in p.read_text().splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"api_keys_file: {p} holds no key")
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_CHARS]
    if short:
        raise ValueError(f"api_keys_file: {p}: key #{short[0] + 1} is shorter than {MIN_KEY_CHARS} characters")
    return [k.encode() for k in keys]


class ApiKeyCheck:
    """``check(metadata)`` raises Unauthenticated unless the metadata carries one of the keys."""

    def __init__(self, config: AuthConfig):
        self.required = config.required
        self.keys = load_keys(config.keys_file) if config.required else []

    @staticmethod
    def presented(metadata) -> str | None:
        for name, value in metadata or ():
            name = name.lower()
            if name == HEADER:
                return value if isinstance(value, str) else value.decode(errors="replace")
            if name == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
                return value[7:].strip()
        return None

    def check(self, metadata) -> None:
        if not self.required:
            return
        key = self.presented(metadata)
        if not key:
            raise Unauthenticated(f"missing API key: send metadata '{HEADER}: <key>'")
        given = key.encode(errors="replace")
        # compare against every key (no early exit), in constant time per key
        ok = False
        for k in self.keys:
            ok |= hmac.compare_digest(given, k)
        if not ok:
            raise Unauthenticated("invalid API key")
