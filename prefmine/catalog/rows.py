"""Catalogue write rows and their validation.

A row is a mapping with `item` (the item id) and `op` ("upsert", the default, or "retire"). An upsert carries the
item's fields: `title` (required for an item the catalogue does not hold yet: the encoder embeds it), `brand`,
`categories` (a list of names, or one name), `price` (finite, >= 0), `available` (bool), `kind`, `published`
(when a content item was published: Unix seconds, finite and >= 0, or ISO 8601 text, stored as seconds; what the
freshness rule decays by) and `description` (free text, at most MAX_DESCRIPTION_CHARS; tabs and line breaks,
which separate a description's paragraphs, are stored as one space, any other control character is refused; the
encoder reads it after the title, brand and categories, as prepare builds a bundle item's text, and Search indexes
it where its `lexical_fields` name it); a field left out of an upsert keeps its earlier value. A retire carries nothing else.
`validate_rows` checks each row on its own: a bad row is named (its index and item id) with the reason and refused,
the good rows are kept, so one typo does not drop a whole batch and no bad value reaches the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

OPS = ("upsert", "retire")
FIELDS = ("title", "brand", "categories", "price", "available", "kind", "published", "description")
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 4000
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 20_000
MAX_CATEGORIES = 32
MAX_ROWS = 10_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BREAKS = re.compile(r"[\t\n\r]+")  # paragraph breaks and tabs in a description: read as one space
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class Unparsable(str):
    """A row that could not be read at all (a line that is not JSON): its text is the reason it is refused."""


@dataclass
class CatalogChange:
    """One stored catalogue change: `fields` holds only the fields the row gave (an upsert) or nothing (a retire).
    `id` is the change log's id (0 before it is stored)."""

    item: str
    op: str = "upsert"
    fields: dict = field(default_factory=dict)
    id: int = 0
    received: float = 0.0


@dataclass
class RowError:
    """Why row `index` (item id `item`, "" when it had none) was refused."""

    index: int
    item: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.index} (item {self.item!r}): {self.reason}"


def _text(value, name: str, limit: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long, at most {limit}")
    if _CONTROL.search(value):
        raise ValueError(f"{name} contains a control character")
    return value


def _categories(value) -> list[str]:
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"categories must be a list of names, got {type(value).__name__}")
    if len(value) > MAX_CATEGORIES:
        raise ValueError(f"categories has {len(value)} names, at most {MAX_CATEGORIES}")
    names = [_text(v, "categories[]", MAX_NAME_CHARS) for v in value]
    return [n for n in names if n]


def _price(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("price must be a number, got bool")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"price must be a number, got {str(value)[:20]!r}") from None
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"price must be finite and >= 0, got {price!r}")
    return price


def _published(value) -> float:
    if isinstance(value, bool):
        raise ValueError("published must be Unix seconds or ISO 8601 text, got bool")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"published must be Unix seconds or ISO 8601 text, got {text[:30]!r}") from None
            if stamp.tzinfo is None:  # a time without a zone is UTC, as the events source reads it
                stamp = stamp.replace(tzinfo=timezone.utc)
            seconds = stamp.timestamp()
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"published must be Unix seconds or ISO 8601 text, got {type(value).__name__}") \
                from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"published must be finite and >= 0 (Unix seconds), got {seconds!r}")
    return seconds


def _available(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"available must be true or false, got {str(value)[:20]!r}")


def check_row(row, known: bool = False) -> CatalogChange:
    """The change a row asks for, or ValueError with the reason. `known`: the catalogue already holds the item
    (an upsert may then leave out the title)."""
    if isinstance(row, Unparsable):
        raise ValueError(str(row))
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a mapping, got {type(row).__name__}")
    item = _text(row.get("item", ""), "item", MAX_ID_CHARS, required=True)
    op = row.get("op") or "upsert"
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {str(op)[:20]!r}")
    unknown = sorted(set(row) - {"item", "op", *FIELDS})
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(map(str, unknown))[:100]}")
    if op == "retire":
        extra = [f for f in FIELDS if row.get(f) not in (None, "")]
        if extra:
            raise ValueError(f"a retire carries no fields, got {', '.join(extra)}")
        return CatalogChange(item=item, op="retire")
    fields: dict = {}
    if row.get("title") is not None:
        fields["title"] = _text(row["title"], "title", MAX_TITLE_CHARS, required=True)
    elif not known:
        raise ValueError("title is required for a new item (the encoder embeds it)")
    for name in ("brand", "kind"):
        if row.get(name) is not None:
            fields[name] = _text(row[name], name, MAX_NAME_CHARS)
    if row.get("categories") is not None:
        fields["categories"] = _categories(row["categories"])
    if row.get("price") not in (None, ""):
        fields["price"] = _price(row["price"])
    if row.get("available") not in (None, ""):
        fields["available"] = _available(row["available"])
    if row.get("published") not in (None, ""):
        fields["published"] = _published(row["published"])
    if row.get("description") is not None:
        description = row["description"]
        if isinstance(description, str):  # a description's paragraphs, not a typo: joined, not refused
            description = _BREAKS.sub(" ", description)
        fields["description"] = _text(description, "description", MAX_DESCRIPTION_CHARS)
    return CatalogChange(item=item, op="upsert", fields=fields)


def validate_rows(rows, known=frozenset()) -> tuple[list[CatalogChange], list[RowError]]:
    """(the good rows' changes in order, one RowError per bad row). `known`: ids the catalogue holds already
    (their upserts may leave out the title). More than MAX_ROWS rows is refused as a whole (ValueError)."""
    rows = list(rows)
    if len(rows) > MAX_ROWS:
        raise ValueError(f"{len(rows)} rows in one write, at most {MAX_ROWS}")
    good, bad = [], []
    for i, row in enumerate(rows):
        try:
            good.append(check_row(row, known=isinstance(row, dict) and row.get("item") in known))
        except ValueError as e:
            item = row.get("item") if isinstance(row, dict) else None
            bad.append(RowError(i, item[:MAX_ID_CHARS] if isinstance(item, str) else "", str(e)))
    return good, bad


def changes_digest(changes: list[CatalogChange]) -> str:
    """A digest of the changes' content, to tell a true retry from a reused idempotency key."""
    rows = [[c.item, c.op, c.fields] for c in changes]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def change_row(c: CatalogChange) -> tuple:
    """(item, op, fields as JSON text) as stored in `catalog_changes`."""
    return (c.item, c.op, json.dumps(c.fields, sort_keys=True, separators=(",", ":")))


def change_from_row(row) -> CatalogChange:
    """Inverse of `change_row` plus (id, received); fields may come back as JSON text or as a mapping."""
    cid, item, op, fields, received = row
    return CatalogChange(item=str(item), op=str(op), fields=json.loads(fields) if isinstance(fields, str) else
                         dict(fields), id=int(cid), received=float(received))
