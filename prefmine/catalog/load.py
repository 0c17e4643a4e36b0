"""The bulk path of the live catalogue: rows read from a JSON-lines or CSV file, validated like the write RPC's
rows and logged in the feedback store in batches (`prefmine catalog load`).

CSV columns are the row fields (`item`, `op`, `title`, `brand`, `categories`, `price`, `available`, `kind`,
`published`, `description`); `categories` there is one cell of names separated by "|" (a description holding
commas is quoted as CSV quotes any cell). Empty cells are left out of the row, so an upsert of a known item keeps
its earlier value for them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefmine.catalog.rows import MAX_ROWS, RowError, Unparsable, validate_rows


@dataclass
class LoadResult:
    """What a bulk load stored (`stored` changes, the log id of the last one) and refused (`errors`)."""

    stored: int = 0
    last_id: int = 0
    errors: list[RowError] = field(default_factory=list)


def read_rows(path: str | Path) -> list:
    """The rows of a .jsonl/.json-lines or .csv file (a JSON line that does not parse becomes a row that
    validation refuses, naming its line)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = []
            for rec in csv.DictReader(f):
                row = {k: v for k, v in rec.items() if k is not None and v not in (None, "")}
                if "categories" in row:
                    row["categories"] = [c for c in row["categories"].split("|") if c.strip()]
                rows.append(row)
            return rows
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(Unparsable(f"line {n} is not JSON ({e.msg})"))
    return rows


def load_file(store, path: str | Path, known=frozenset(), batch: int = MAX_ROWS,
              key_prefix: str | None = None) -> LoadResult:
    """Validate the file's rows and log the good ones in `store` in batches of `batch` rows. With `key_prefix`
    each batch carries the idempotency key "<prefix>:<batch number>", so rerunning a load that stopped halfway
    stores each batch once. Row indexes in the errors count from 0 over the whole file."""
    rows = read_rows(path)
    result = LoadResult()
    for b, start in enumerate(range(0, len(rows), batch)):
        good, bad = validate_rows(rows[start:start + batch], known=known)
        result.errors += [RowError(e.index + start, e.item, e.reason) for e in bad]
        if good:
            key = f"{key_prefix}:{b}" if key_prefix else None
            result.last_id = store.append_catalog(good, idempotency_key=key)
            result.stored += len(good)
    return result
