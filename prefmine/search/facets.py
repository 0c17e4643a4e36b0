"""Facet counts: how many items of the matched set carry each category and each brand."""

from __future__ import annotations

from collections import Counter

import numpy as np

from prefmine.search.catalog import Catalog


def facet_counts(catalog: Catalog, matched: np.ndarray, limit: int) -> dict[str, list[tuple[str, int]]]:
    """`{"category": [(name, count), ...], "brand": [...]}` over the items in `matched` (indices), most frequent
    first (ties by name), at most `limit` per facet. An item counts once per category on its path; items
    without a brand are not counted under brand."""
    cats: Counter = Counter()
    brands: Counter = Counter()
    for i in np.asarray(matched, dtype=np.int64).tolist():
        cats.update(set(catalog.categories[i]))
        if catalog.brands[i]:
            brands[catalog.brands[i]] += 1

    def top(c: Counter) -> list[tuple[str, int]]:
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    return {"category": top(cats), "brand": top(brands)}
