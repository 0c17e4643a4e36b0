"""What the catalogue says about a user's history: top categories, brands and title keywords (GetUserProfile),
and the human-readable reasons of Recommend's explain.

``CatalogText`` is built once per ingress replica from the bundle's items table (item, title, brand,
categories). Keywords are tf-idf weights of title words: a word's count over the user's items times
log(n_items / items whose title has it), so words every title carries ("gift", "card" in Gift_Cards) sink and the
user's particular ones rise. The bundle keeps catalogue text, not review text, so keywords come from titles.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
STOPWORDS = frozenset(
    "the and for with from your you this that are was not but all any can had her his its one our out per "
    "via into over than then them they what when who will more most new only other some such also each".split()
)
TOP = 10


def _categories(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(c) for c in value if c is not None and str(c)]


def words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


class CatalogText:
    """Per item: title words, brand, categories; document frequencies of title words."""

    def __init__(self, items):
        self.titles = items["title"].fillna("").astype(str).tolist()
        brand = items["brand"] if "brand" in items else [""] * len(items)
        self.brands = ["" if b is None else str(b).strip() for b in brand]
        cats = items["categories"] if "categories" in items else [None] * len(items)
        # a category path repeats names ("Gift Cards > Gift Cards"): count each name once per item
        self.categories = [list(dict.fromkeys(_categories(c))) for c in cats]
        self.title_words = [words(t) for t in self.titles]
        df = Counter(w for ws in self.title_words for w in set(ws))
        n = max(1, len(self.titles))
        self.idf = {w: math.log(n / c) for w, c in df.items()}

    def top_categories(self, items, top: int = TOP) -> list[tuple[str, float]]:
        c = Counter(name for i in items for name in self.categories[int(i)])
        return [(k, float(v)) for k, v in c.most_common(top)]

    def top_brands(self, items, top: int = TOP) -> list[tuple[str, float]]:
        c = Counter(self.brands[int(i)] for i in items if self.brands[int(i)])
        return [(k, float(v)) for k, v in c.most_common(top)]

    def keywords(self, items, top: int = TOP) -> list[tuple[str, float]]:
        tf = Counter(w for i in items for w in self.title_words[int(i)])
        scored = sorted(((w, c * self.idf.get(w, 0.0)) for w, c in tf.items()), key=lambda x: (-x[1], x[0]))
        return [(w, round(s, 4)) for w, s in scored[:top] if s > 0]

    def reason(self, item: int, source: int | None, similarity: float | None, popularity: float | None) -> str:
        """Why ``item`` was recommended: the history item that led to it (and shared categories), or popularity."""
        if source is None:
            n = int(popularity or 0)
            return f"popular: {n} interaction{'s' if n != 1 else ''} in the catalogue's history"
        title = self.titles[int(source)] or "an item"
        if len(title) > 60:
            title = title[:59] + "…"
        text = f"because you interacted with '{title}' (similarity {similarity:.2f})"
        cats = self.categories[int(item)]
        specific = cats[1:] if len(cats) > 1 else cats  # the first name is the catalogue's root: says nothing
        shared = [c for c in specific if c in set(self.categories[int(source)])]
        if shared:
            text += f"; same category: {shared[-1]}"
        if self.brands[int(item)] and self.brands[int(item)] == self.brands[int(source)]:
            text += f"; same brand: {self.brands[int(item)]}"
        return text

