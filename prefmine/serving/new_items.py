"""Catalogue items written after a bundle was built, served without a new bundle (issue 25, live catalogue).

A replica's poll of the catalogue change log (prefmine.serving.live_catalog) leaves the fields of every upserted
item in `LiveCatalog.written`. The ids the bundle does not hold are this replica's *new items*: each one's text
is built as the pipeline builds an item's text (prefmine.data.clean.item_text: title, brand, most specific
categories, description), embedded by the bundle's encoder, and turned into a ranker item vector by the fused
ranker's cold-item path (FusedRanker.cold_item_vectors: no ID term, the text alone, as training treats items
without interactions). The vectors are appended after the bundle's items: new item j has
index `n_bundle_items + j` in every served array (ranker vectors, text vectors, rule attributes, search catalogue),
so the ranker scores, retrieves, blends and filters it like any item.

`NewItems` is one immutable snapshot; its `digest` names its content, so deployments cache what they derive from it
and a request uses one snapshot end to end (indexes are the snapshot's own). A snapshot holds exactly the written
items the bundle does not hold, in order of first write: a retired one is blocked at once by the live catalogue
(like a retired bundle item) and left out of the next snapshot; a changed text is embedded again, an unchanged one
keeps its vectors. Replicas that read the same log build the same snapshot. At most `cap` new items are held
(LiveCatalogConfig.max_new_items), which bounds memory; later ones wait for the next bundle (`plan` counts them).

`plan` (what to embed) and `apply` (the new snapshot) are split so a caller can embed asynchronously in between;
`new_items_from` does both with given embed and cold-vector functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prefmine.data.clean import written_item_text
from prefmine.rules import ItemAttributes
from prefmine.serving.vectors import unit_rows


def new_item_text(fields: dict) -> str:
    """The text the encoder reads for a written item (title, brand, categories, description), as prepare builds a
    bundle item's (prefmine.data.clean.written_item_text)."""
    return written_item_text(fields.get("title", ""), fields.get("brand", ""), fields.get("categories"),
                             fields.get("description", ""))


@dataclass(frozen=True)
class NewItems:
    """Items appended after a bundle's `base_n` items: ids, their fields and texts, unit text vectors (the
    encoder's space) and ranker vectors, row j = item index base_n + j."""

    base_n: int
    ids: tuple[str, ...] = ()
    fields: tuple[dict, ...] = ()
    texts: tuple[str, ...] = ()
    text_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    digest: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_items(self) -> int:
        """Items served in all: the bundle's and the new ones."""
        return self.base_n + len(self.ids)

    def index(self, item_id: str) -> int | None:
        j = self._slots.get(str(item_id))
        return None if j is None else self.base_n + j

    @property
    def _slots(self) -> dict[str, int]:
        slots = self.__dict__.get("_slot_map")
        if slots is None:
            slots = {i: j for j, i in enumerate(self.ids)}
            object.__setattr__(self, "_slot_map", slots)
        return slots

    def attributes(self, base: ItemAttributes) -> ItemAttributes:
        """The bundle's rule attributes with the new items' appended (what request-time rules filter on)."""
        f = self.fields
        return ItemAttributes(
            item_ids=np.concatenate([base.item_ids, np.asarray(self.ids, dtype=base.item_ids.dtype)]),
            categories=[*base.categories, *(frozenset(x.get("categories") or ()) for x in f)],
            brand=np.concatenate([base.brand, np.array([str(x.get("brand") or "") for x in f], dtype=object)]),
            price=np.concatenate([base.price, np.array([_number(x.get("price")) for x in f], dtype=np.float64)]),
            available=np.concatenate([base.available, np.array([x.get("available", True) is not False for x in f],
                                                               dtype=bool)]),
            kind=np.concatenate([base.kind, np.array([str(x.get("kind") or "product") for x in f], dtype=object)]),
            published=np.concatenate([base.published, np.array([_number(x.get("published")) for x in f],
                                                                dtype=np.float64)]))


    def frame(self):
        """The new items as an items table (item, title, brand, categories, price, available, kind, published,
        description: what Search's lexical side index reads where its `lexical_fields` name it)."""
        import pandas as pd

        f = self.fields
        return pd.DataFrame({"item": list(self.ids), "title": [str(x.get("title") or "") for x in f],
                             "brand": [str(x.get("brand") or "") for x in f],
                             "categories": [list(x.get("categories") or ()) for x in f],
                             "price": [_number(x.get("price")) for x in f],
                             "available": [x.get("available", True) is not False for x in f],
                             "kind": [str(x.get("kind") or "") for x in f],
                             "published": [_number(x.get("published")) for x in f],
                             "description": [str(x.get("description") or "") for x in f]})

    def search_catalog(self):
        """The new items as a search catalogue (prefmine.search.Catalog) to append to the bundle's."""
        from prefmine.search.catalog import Catalog

        return Catalog.from_items(self.frame())


def prior_popularity(popularity: np.ndarray, quantile: float) -> float:
    """The popularity a new item counts with until a bundle counts its interactions: the `quantile` of the bundle
    items' popularity (0 for an empty bundle)."""
    pop = np.asarray(popularity, dtype=np.float64)
    return float(np.quantile(pop, float(quantile))) if len(pop) else 0.0


RULE_FIELDS = ("categories", "brand", "price", "kind", "published")  # what request-time rules filter on


def with_updates(attrs: ItemAttributes, given: dict[str, dict], in_bundle: Callable[[str], int | None]) -> ItemAttributes:
    """`attrs` with the rule fields (RULE_FIELDS) that catalogue upserts gave the bundle's own items written over
    the bundle's values, so that a price, category, brand, kind or publication change reaches the served filters
    and quotas without a new bundle; `attrs` itself when no upsert gave one. `given`: id -> the fields the log
    gave (LiveCatalog.given). Availability is not here: the live catalogue's blocked set keeps unavailable items
    out of every answer. New items' attributes come from their own fields (NewItems.attributes)."""
    rows = [(i, f) for item, f in given.items()
            if any(k in f for k in RULE_FIELDS) and (i := in_bundle(item)) is not None]
    if not rows:
        return attrs
    categories, brand, price = list(attrs.categories), attrs.brand.copy(), attrs.price.copy()
    kind, published = attrs.kind.copy(), attrs.published.copy()
    for i, f in rows:
        if "categories" in f:
            categories[i] = frozenset(str(c) for c in f["categories"] or ())
        if "brand" in f:
            brand[i] = str(f["brand"] or "")
        if "price" in f:
            price[i] = _number(f["price"])
        if "kind" in f:
            kind[i] = str(f["kind"] or "product")
        if "published" in f:
            published[i] = _number(f["published"])
    return ItemAttributes(item_ids=attrs.item_ids, categories=categories, brand=brand, price=price,
                          available=attrs.available, kind=kind, published=published)


def _number(value) -> float:
    """A price or publication time as a float, NaN when unknown."""
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class Plan:
    """The next snapshot: its `rows` (id, fields, text), `embed` the indices of the rows whose text `current`
    does not hold (to be embedded), `left_out` the new ids beyond the cap, `same` when nothing changed."""

    rows: list[tuple[str, dict, str]]
    embed: list[int]
    left_out: int = 0
    same: bool = False


def plan(current: NewItems, written: dict[str, dict], in_bundle: Callable[[str], int | None], cap: int) -> Plan:
    """The written items the bundle does not hold (in order of first write, the first `cap`), and which of them
    need their text embedded because `current` does not hold it."""
    rows, embed, left_out = [], [], 0
    for item, fields in written.items():
        if in_bundle(item) is not None:
            continue
        if len(rows) >= cap:
            left_out += 1
            continue
        text = new_item_text(fields)
        j = current.index(item)
        if j is None or current.texts[j - current.base_n] != text:
            embed.append(len(rows))
        rows.append((str(item), dict(fields), text))
    same = not embed and [r[0] for r in rows] == list(current.ids) and \
        all(current.fields[j] == r[1] for j, r in enumerate(rows))
    return Plan(rows, embed, left_out, same)


def apply(current: NewItems, p: Plan, text_vectors: np.ndarray, vectors: np.ndarray) -> NewItems:
    """The snapshot the plan describes: `text_vectors` and `vectors` are the encoder's and the ranker's vectors of
    the rows `p.embed` names, in that order; the other rows keep the vectors `current` holds for them."""
    if p.same:
        return current
    got = {r: n for n, r in enumerate(p.embed)}
    text_vectors, vectors = unit_rows(text_vectors), np.asarray(vectors, np.float32)
    tv, rv = [], []
    for r, (item, _, _) in enumerate(p.rows):
        if r in got:
            tv.append(text_vectors[got[r]]), rv.append(vectors[got[r]])
        else:
            j = current.index(item) - current.base_n
            tv.append(current.text_vectors[j]), rv.append(current.vectors[j])
    text_dim = tv[0].shape[0] if tv else 0
    dim = rv[0].shape[0] if rv else 0
    ids, fields, texts = (tuple(r[c] for r in p.rows) for c in range(3))
    digest = hashlib.sha256(json.dumps([current.base_n, ids, texts, fields], sort_keys=True,
                                       default=str).encode()).hexdigest()[:16] if ids else ""
    return NewItems(current.base_n, ids, fields, texts, np.asarray(tv, np.float32).reshape(len(ids), text_dim),
                    np.asarray(rv, np.float32).reshape(len(ids), dim), digest)


def new_items_from(current: NewItems, written: dict[str, dict], in_bundle: Callable[[str], int | None], cap: int,
                   embed: Callable[[list[str]], np.ndarray], cold_vectors: Callable[[np.ndarray], np.ndarray],
                   batch: int = 64) -> NewItems:
    """`current` brought up to date with the written items: texts embedded by `embed` (`batch` at a time), ranker
    vectors from `cold_vectors` (RankerRuntime.cold_vectors: the fused ranker's text path)."""
    p = plan(current, written, in_bundle, cap)
    if p.same:
        return current
    texts = [p.rows[r][2] for r in p.embed]
    text_vectors = embed_batched(embed, texts, batch)
    return apply(current, p, text_vectors, cold_vectors(text_vectors) if len(texts) else text_vectors)


def embed_batched(embed: Callable[[list[str]], np.ndarray], texts: list[str], batch: int) -> np.ndarray:
    parts = [np.asarray(embed(texts[i:i + batch]), np.float32) for i in range(0, len(texts), max(1, batch))]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
