"""The current catalogue from a base items table and a change log: what a serving replica holds after polling
the log, and what the next bundle's dataset is built from.

Changes are applied in log order (increasing id): an upsert sets the fields it gives on top of the item's earlier
ones (a new item starts from its upsert), a retire removes the item; an item upserted after its retirement comes
back with the fields of that upsert only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from prefmine.catalog.rows import CatalogChange

DEFAULTS = {"title": "", "brand": "", "categories": [], "price": math.nan, "available": True, "kind": "",
            "published": math.nan, "description": ""}


def _row_fields(row: dict) -> dict:
    out = {}
    for name in DEFAULTS:
        if name not in row:
            continue
        value = row[name]
        if name == "categories":
            value = [] if value is None or (isinstance(value, float) and math.isnan(value)) else [str(v) for v in value]
        elif name in ("price", "published"):
            value = _number(value)
        elif name == "available":
            value = True if value is None or (isinstance(value, float) and math.isnan(value)) else bool(value)
        elif not isinstance(value, str):
            value = ""
        out[name] = value
    return out


def _number(value) -> float:
    """A price or publication time as a float; NaN (unknown) for a missing or unreadable one."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


class CatalogState:
    """Items by id with their fields (`items`, in first-seen order), the ids retired by the log (`retired`), and
    the id of the last change applied (`last_id`: where the next poll of the log starts)."""

    def __init__(self, base: pd.DataFrame | None = None):
        self.items: dict[str, dict] = {}
        self.retired: set[str] = set()
        self.last_id = 0
        if base is not None:
            for row in base.to_dict("records"):
                self.items[str(row["item"])] = {**DEFAULTS, **_row_fields(row)}

    def apply(self, changes: Iterable[CatalogChange]) -> list[str]:
        """Apply changes in order; returns the ids whose state changed (each once, in order of first change)."""
        touched: dict[str, None] = {}
        for c in changes:
            if c.op == "retire":
                self.items.pop(c.item, None)
                self.retired.add(c.item)
            else:
                self.retired.discard(c.item)
                self.items[c.item] = {**self.items.get(c.item, DEFAULTS), **c.fields}
            touched[c.item] = None
            self.last_id = max(self.last_id, int(c.id))
        return list(touched)

    def servable(self, item: str) -> bool:
        """Whether the item may be shown: held, not retired, and available."""
        fields = self.items.get(item)
        return fields is not None and bool(fields.get("available", True))

    def to_frame(self) -> pd.DataFrame:
        """The items table (`item` plus the catalogue fields), one row per held item."""
        rows = [{"item": item, **fields} for item, fields in self.items.items()]
        return pd.DataFrame(rows, columns=["item", *DEFAULTS])
