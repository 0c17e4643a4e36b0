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


def written_item_text(title, brand, categories, description) -> str:
    """`item_text` of an item's fields as a catalogue write gives them (HTML, entities, odd spacing): each part
    cleaned as a source cleans its fields first, so the text is the one prepare builds from the same fields. What
    a serving replica embeds for a new item and what the next bundle's fold rebuilds, so both read one text."""
    if categories is None or isinstance(categories, float):  # NaN from pandas
        categories = []
    names = [categories] if isinstance(categories, str) else list(categories)
    return item_text(clean_text(title), clean_text(brand), [n for n in map(clean_text, names) if n],
                     clean_text(description))
