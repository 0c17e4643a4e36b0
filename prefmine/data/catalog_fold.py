"""The feedback store's catalogue change log folded into a dataset's items table, so that the next bundle holds
what the live catalogue served (`prefmine data prepare --catalog-feedback STORE`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prefmine.data.clean import item_text

FOLDED_TEXT = ("title", "brand", "categories")  # catalogue fields the item's text is built from
FOLDED_CONTENT = {"kind": "", "published": math.nan}  # content fields folded as they are (value when not given)


def fold_catalog(items: pd.DataFrame, changes) -> pd.DataFrame:
    """The items table with the feedback store's catalogue changes (prefmine.catalog, in log order) folded in, so
    the next bundle holds what the live catalogue served: the title, brand and categories an upsert gave replace
    the catalogue's and the item's text is rebuilt from them; the kind and publication time an upsert gave replace
    the catalogue's (the column is added when the catalogue had none: empty kind, which serving reads as product,
    and unknown publication time for the other items), so content stays content and keeps its age in the freshness
    rule; an item new to the catalogue is appended (it has no interactions: the ranker trains it as a cold item,
    from its text); a retired item is never appended, and one with interactions is kept, since its events stay in
    the users' histories (serving keeps it blocked through the same change log)."""
    given: dict[str, dict] = {}
    for c in sorted(changes, key=lambda c: int(c.id)):
        if c.op == "retire":
            given.pop(c.item, None)
        else:
            given[c.item] = {**given.get(c.item, {}), **{k: v for k, v in c.fields.items()
                                                         if k in FOLDED_TEXT or k in FOLDED_CONTENT}}
    out = items.copy()
    for name, missing in FOLDED_CONTENT.items():
        if name not in out.columns and any(name in f for f in given.values()):
            out[name] = missing
    if "published" in out.columns:  # seconds as floats, NaN unknown (a source may give whole seconds)
        out["published"] = pd.to_numeric(out["published"], errors="coerce").astype(np.float64)
    known = {it: i for i, it in enumerate(out["item"].astype(str))}
    for item, f in given.items():
        if item in known:
            for name, value in f.items():
                out.at[known[item], name] = list(value) if name == "categories" else value
    new = [it for it in given if it not in known]
    if new:
        rows = pd.DataFrame({c: [[] if c == "categories" else "" for _ in new] for c in out.columns})
        rows["item"] = new
        rows["text_source"] = "catalogue"
        for name in FOLDED_TEXT:
            rows[name] = [given[it].get(name, [] if name == "categories" else "") for it in new]
        for name, missing in FOLDED_CONTENT.items():
            if name in out.columns:
                rows[name] = [given[it].get(name, missing) for it in new]
        out = pd.concat([out, rows], ignore_index=True)
    touched = out["item"].astype(str).isin(set(given))
    out.loc[touched, "text"] = [item_text(t, b, list(c), d) for t, b, c, d in zip(
        out.loc[touched, "title"], out.loc[touched, "brand"], out.loc[touched, "categories"],
        out.loc[touched, "description"])]
    return out


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
