"""Request-time filters: which catalogue items a search may return. Applied to the whole catalogue before any top
k is taken, so k items come back whenever k items qualify."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prefmine.search.catalog import Catalog


class FilterError(ValueError):
    """A filter that cannot be applied; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class SearchFilters:
    """Empty lists and None mean "no constraint". An item passes when it has one of `categories` (any level of its
    category path, compared case-insensitively), one of `brands`, a known price within [min_price, max_price], is
    available (when `available_only`) and is of one of `kinds`."""

    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    available_only: bool = False
    kinds: tuple[str, ...] = ()

    def check(self, catalog: Catalog) -> None:
        """Raise FilterError naming the field of the first filter that is malformed or that the catalogue cannot
        answer (a price range over a catalogue without prices, kinds over one without kinds)."""
        for name in ("min_price", "max_price"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise FilterError(name, f"{v} is not a finite non-negative price")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise FilterError("min_price", f"{self.min_price} is above max_price {self.max_price}")
        if (self.min_price is not None or self.max_price is not None) and not catalog.has_price:
            raise FilterError("min_price" if self.min_price is not None else "max_price",
                              "this catalogue has no prices")
        if self.kinds and not any(catalog.kinds):
            raise FilterError("kinds", "this catalogue has no item kinds")
        for name in ("categories", "brands", "kinds"):
            bad = [v for v in getattr(self, name) if not isinstance(v, str) or not v.strip()]
            if bad:
                raise FilterError(name, f"empty or non-text value {bad[0]!r}")

    def mask(self, catalog: Catalog) -> np.ndarray:
        """Boolean mask over the catalogue's items: True where the item passes every filter."""
        self.check(catalog)
        keep = np.ones(len(catalog), dtype=bool)
        if self.categories:
            want = {c.strip().casefold() for c in self.categories}
            keep &= np.fromiter((any(c.casefold() in want for c in cats) for cats in catalog.categories), bool,
                                len(catalog))
        if self.brands:
            want = {b.strip().casefold() for b in self.brands}
            keep &= np.fromiter((b.casefold() in want for b in catalog.brands), bool, len(catalog))
        if self.min_price is not None:
            keep &= np.nan_to_num(catalog.price, nan=-1.0) >= self.min_price
        if self.max_price is not None:
            keep &= np.nan_to_num(catalog.price, nan=np.inf) <= self.max_price
        if self.available_only:
            keep &= catalog.available
        if self.kinds:
            want = {k.strip().casefold() for k in self.kinds}
            keep &= np.fromiter((k.casefold() in want for k in catalog.kinds), bool, len(catalog))
        return keep

    @property
    def empty(self) -> bool:
        return not (self.categories or self.brands or self.kinds or self.available_only
                    or self.min_price is not None or self.max_price is not None)
