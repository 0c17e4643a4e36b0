"""What Search knows about each item besides its vectors: the text it indexes and the fields it filters and
facets on (brand, categories, price, availability, kind), read from a catalogue table.

The table is the bundle's `catalog/items.parquet` or a prepared dataset's `items` (columns `title`, `brand`,
`categories`, and where the source has them `description`, `price`, `available`, `kind`, `attribute_names`). The S3-Rec sets
(seqrec) carry no brand or category columns, only `attribute_names` (brand first when known, then the category
path); there a name is taken as a category when any item lists it after the first place, and the first name as
the brand when it is not a category and not the placeholder "Unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

UNKNOWN_BRAND = "Unknown"


def _names(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if v is not None and str(v).strip()]


@dataclass
class Catalog:
    """Per item (row i = item index i): title, brand ("" when unknown), categories, price (NaN when unknown),
    available (True when the table says nothing), kind ("" when unknown) and description ("" when unknown; None:
    all unknown)."""

    titles: list[str]
    brands: list[str]
    categories: list[list[str]]
    price: np.ndarray
    available: np.ndarray
    kinds: list[str]
    descriptions: list[str] | None = field(default=None)

    def __post_init__(self):
        if self.descriptions is None:
            self.descriptions = [""] * len(self.titles)
        if len(self.descriptions) != len(self.titles):
            raise ValueError(f"{len(self.descriptions)} descriptions for {len(self.titles)} items")

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def has_price(self) -> bool:
        return bool(np.isfinite(self.price).any())

    def index_texts(self, fields=("title", "brand", "categories")) -> list[str]:
        """The text each item is indexed under: by default title, brand and category names; `fields` (a
        SearchConfig's `lexical_fields`) may add the description."""
        parts = {"title": lambda i: [self.titles[i]], "brand": lambda i: [self.brands[i]],
                 "categories": lambda i: list(self.categories[i]), "description": lambda i: [self.descriptions[i]]}
        return [" ".join(w for f in fields for w in parts[f](i) if w).strip() for i in range(len(self))]

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalog:
        n = len(items)
        titles = items["title"].fillna("").astype(str).tolist() if "title" in items else [""] * n
        brands = [b if isinstance(b, str) else "" for b in items["brand"]] if "brand" in items else [""] * n
        cats = [_names(c) for c in items["categories"]] if "categories" in items else [[] for _ in range(n)]
        if "attribute_names" in items and not any(brands) and not any(cats):
            brands, cats = _split_attribute_names([_names(a) for a in items["attribute_names"]])
        price = (pd.to_numeric(items["price"], errors="coerce").to_numpy(np.float64) if "price" in items
                 else np.full(n, np.nan))
        available = (items["available"].fillna(True).astype(bool).to_numpy() if "available" in items
                     else np.ones(n, dtype=bool))
        kinds = [k if isinstance(k, str) else "" for k in items["kind"]] if "kind" in items else [""] * n
        descriptions = ([d.strip() if isinstance(d, str) else "" for d in items["description"]]
                        if "description" in items else [""] * n)
        return cls(titles, [b.strip() for b in brands], cats, price, available, kinds, descriptions)


def _split_attribute_names(names: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    later = {a for row in names for a in row[1:]}
    brands, cats = [], []
    for row in names:
        if row and row[0] not in later:
            brands.append("" if row[0] == UNKNOWN_BRAND else row[0])
            cats.append(row[1:])
        else:
            brands.append("")
            cats.append(row)
    return brands, cats
