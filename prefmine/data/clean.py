"""Text cleaning for raw catalogue and review fields.

Amazon 2018 metadata carries HTML fragments (most Magazine titles are `<span class=...` leftovers), HTML entities
(`&amp;`), lists of description paragraphs and empty strings; reviews can lack text. These helpers turn each into
plain, single-spaced text, returning "" when nothing usable is left.
"""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>?")
_SPACE = re.compile(r"\s+")


def clean_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    if isinstance(value, float):  # NaN from pandas
        return "" if value != value else str(value)
    text = html.unescape(str(value))
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def clean_list(values) -> list[str]:
    if not isinstance(values, (list, tuple)):
        return []
    return [t for t in (clean_text(v) for v in values) if t]


def item_text(title: str, brand: str, categories: list[str], description: str, max_chars: int = 2000) -> str:
    """The text the encoder reads for an item: title, brand, most specific categories, description."""
    parts = [title, brand, " / ".join(categories[-3:]) if categories else "", description]
    return " . ".join(p for p in parts if p)[:max_chars]
