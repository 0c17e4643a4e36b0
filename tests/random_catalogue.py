"""A random shop catalogue for the rules property tests (tests/test_rules.py, tests/test_request_rules.py): item
attributes drawn from a seed, which is much faster for hypothesis to draw than each attribute on its own."""

from __future__ import annotations

import numpy as np

from prefmine.rules import ItemAttributes

CATS = ["skin", "hair", "nails", "tools"]
BRANDS = ["acme", "bolt", "coda"]
KINDS = ["product", "article", "video"]


def random_attributes(rng: np.random.Generator, n: int, available_rate: float) -> ItemAttributes:
    """n items `i0..i{n-1}`: up to two categories of CATS each, a brand of BRANDS or none, a price in [1, 100)
    or unknown (one in five), available with probability `available_rate`, a kind of KINDS; content (every kind
    but product) published at a time in [0, 200]."""
    kind = rng.choice(np.array(KINDS, dtype=object), size=n)
    return ItemAttributes(
        item_ids=np.array([f"i{j}" for j in range(n)]),
        categories=[frozenset(rng.choice(CATS, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(n)],
        brand=rng.choice(np.array(BRANDS + [""], dtype=object), size=n),
        price=np.where(rng.random(n) < 0.2, np.nan, rng.uniform(1, 100, n).round(1)),
        available=rng.random(n) < available_rate,
        kind=kind, published=np.where(kind == "product", np.nan, rng.uniform(0, 200, n).round()))
