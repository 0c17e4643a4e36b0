"""The feedback store's catalogue change log folded into a dataset's items table, so that the next bundle holds
what the live catalogue served (`prefmine data prepare --catalog-feedback STORE`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prefmine.catalog.rows import FIELDS
from prefmine.catalog.state import DEFAULTS
from prefmine.data.clean import written_item_text

TEXT_COLUMNS = ("title", "brand", "description", "text", "text_source")  # strings: "" when not given


def fold_catalog(items: pd.DataFrame, changes) -> pd.DataFrame:
    """The items table with the feedback store's catalogue changes (prefmine.catalog, in log order) folded in, so
    the next bundle holds what the live catalogue served:
    - every field an upsert gave (title, brand, categories, price, availability, kind, publication time,
      description) replaces the catalogue's, and the item's text is rebuilt from its title, brand, categories and
      description (the catalogue's where the log gave none), each cleaned as a source's (HTML, entities), so the
      next bundle embeds the text a replica embedded for a new item; a field the catalogue had no column for gets one,
      with CatalogState's default for the other items (unknown price and publication time, available, kind ""
      which serving reads as product, no description);
    - an item new to the catalogue is appended (no interactions: the ranker trains it as a cold item, from its
      text); other columns of a new row are empty, NaN for a numeric column;
    - a retired item is never appended; one the table holds (it has interactions, which stay in the users'
      histories) is kept and marked unavailable, so the next bundle does not show it even without the log."""
    given: dict[str, dict] = {}
    retired: set[str] = set()
    for c in sorted(changes, key=lambda c: int(c.id)):
        if c.op == "retire":
            given.pop(c.item, None)
            retired.add(c.item)
        else:
            retired.discard(c.item)
            given[c.item] = {**given.get(c.item, {}), **{k: v for k, v in c.fields.items() if k in FIELDS}}
    out = items.reset_index(drop=True)
    known = {it: i for i, it in enumerate(out["item"].astype(str))}
    retired_known = [known[it] for it in retired if it in known]
    for name in FIELDS:
        if name not in out.columns and (any(name in f for f in given.values())
                                        or (name == "available" and retired_known)):
            out[name] = [DEFAULTS[name]] * len(out) if name == "categories" else DEFAULTS[name]
    for name in ("price", "published"):  # numbers as floats, NaN unknown (a source may give whole seconds)
        if name in out.columns:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype(np.float64)
    for item, f in given.items():
        if item in known:
            for name, value in f.items():
                out.at[known[item], name] = list(value) if name == "categories" else value
    if retired_known:
        out.loc[out.index[retired_known], "available"] = False
    new = [it for it in given if it not in known]
    if new:
        out = pd.concat([out, pd.DataFrame({c: _new_column(out, c, [given[it] for it in new]) for c in out.columns}
                                           | {"item": new})], ignore_index=True)
    if "available" in out.columns:
        out["available"] = out["available"].astype(bool)
    touched = out["item"].astype(str).isin(set(given))
    out.loc[touched, "text"] = [written_item_text(t, b, c, d) for t, b, c, d in zip(
        out.loc[touched, "title"], out.loc[touched, "brand"], out.loc[touched, "categories"],
        out.loc[touched, "description"])]
    return out


def _new_column(items: pd.DataFrame, column: str, fields: list[dict]) -> list:
    """Column `column` for new items with these upserted fields: what they gave, else the empty value of the
    column's kind (CatalogState's default for a catalogue field)."""
    if column in FIELDS:
        return [list(f[column]) if column == "categories" and column in f else f.get(column, DEFAULTS[column])
                for f in fields]
    if column == "text_source":
        return ["catalogue"] * len(fields)
    if column in TEXT_COLUMNS:
        return [""] * len(fields)
    if pd.api.types.is_numeric_dtype(items[column]):  # a source's numeric side column: unknown, not ""
        return [math.nan] * len(fields)
    as_list = any(isinstance(v, (list, np.ndarray)) for v in items[column])
    return [[] if as_list else "" for _ in fields]


def read_catalog_changes(location: str) -> list:
    """Every catalogue change in a feedback store (SQLite path or PostgreSQL DSN), in log order."""
    from prefmine.feedback import open_feedback_store

    store = open_feedback_store(str(location), create=False)
    try:
        changes, last = [], 0
        while page := store.read_catalog_since(last, 100_000):
            changes += page
            last = int(page[-1].id)
        return changes
    finally:
        store.close()
