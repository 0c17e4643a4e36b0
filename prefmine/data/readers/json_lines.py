"""`read_json_lines`: batches of (line numbers, objects) from a JSON-lines file, gzip or plain.

A line that is not UTF-8, not JSON, not an object or lacks a required field is reported by its line and skipped;
the rest of the file is kept. NaN and Infinity stay text, so the row checks name them instead of a missing value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prefmine.data.readers.blocks import LIMITS, ReadLimits, line_blocks
from prefmine.data.rows import BadRows


def _keep_constant(name: str) -> str:
    return name  # NaN / Infinity stay text, so the row checks call them "not a number" instead of a missing value


def read_json_lines(path: Path, bad: BadRows, required: tuple[str, ...], batch_rows: int = 50_000,
                    limits: ReadLimits = LIMITS) -> Iterator[tuple[list[int], list[dict]]]:
    """Batches of (line numbers, parsed objects) from a JSON-lines file (gzip by suffix)."""
    path = Path(path)
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no rows)", "empty_file")
        return
    lines: list[int] = []
    objs: list[dict] = []
    seen, bad_before = 0, sum(bad.counts.values())
    decoder = json.JSONDecoder(parse_constant=_keep_constant)
    for first, block in line_blocks(path, bad, limits):
        for lineno, raw in enumerate(block.split(b"\n")[:-1], first):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.bad(where, None, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
                continue
            try:
                obj = decoder.decode(text)
            except json.JSONDecodeError as e:
                bad.bad(where, None, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json")
                continue
            except RecursionError:
                bad.bad(where, None, "invalid JSON (nested too deeply)", "invalid_json")
                continue
            if not isinstance(obj, dict):
                bad.bad(where, None, "a JSON line must be an object", "invalid_json")
                continue
            absent = [k for k in required if k not in obj]
            if absent:
                bad.bad(where, absent[0], "missing field", f"missing_{absent[0]}")
                continue
            lines.append(lineno)
            objs.append(obj)
            seen += 1
            if len(objs) >= batch_rows:
                yield lines, objs
                lines, objs = [], []
    if objs:
        yield lines, objs
    if seen == 0 and sum(bad.counts.values()) == bad_before:
        bad.bad(str(path), None, "empty file (no valid rows)", "empty_file")
