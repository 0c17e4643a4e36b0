"""A user's text history: what they wrote and what they interacted with, as one string the encoder reads.

The history of a user at time t is the text of their last `n` items before t, most recent first; for an item the
user reviewed, their own review (summary . text) stands in for the item's text, because what they wrote about it
says more about their taste than the catalogue blurb. Every part is cut to `words_per_item` words so several items
fit into the encoder's window; tokenisation truncates the tail, so the most recent items always survive.

Only train-period reviews are read: a user's valid/test review describes the item the evaluation holds out.

Two uses:
- `contrastive_pairs`: (history before t, text of the item at t) for the contrastive objective, which teaches the
  encoder to map a user's history near the next item they choose (in-batch negatives).
- `user_histories`: one history per user over the whole train sequence, embedded into the user's text vector.
"""

from __future__ import annotations

import numpy as np

SEPARATOR = " | "


def _cut(text: str, words: int) -> str:
    parts = (text or "").split()
    return " ".join(parts[:words])


def train_reviews(ds) -> dict[tuple[str, int], str]:
    """(user pseudonym, item index) -> the user's own train-period review text."""
    rev = ds.reviews
    if rev is None or not len(rev):
        return {}
    if "split" in rev.columns:
        rev = rev[rev["split"] == "train"]
    out = {}
    for user, item, summary, text in zip(rev["user"], rev["item"], rev["summary"], rev["text"]):
        idx = ds.item_index.get(str(item))
        body = " . ".join(p for p in (summary, text) if isinstance(p, str) and p)
        if idx is not None and body:
            out[(str(user), idx)] = body
    return out


class HistoryWriter:
    """Builds history strings for one dataset (item texts and train reviews looked up once)."""

    def __init__(self, ds, n_items: int = 8, words_per_item: int = 24):
        self.items_text = [str(t or "") for t in ds.items["text"]]
        self.reviews = train_reviews(ds)
        self.users = ds.users
        self.n, self.words = n_items, words_per_item

    def item_text(self, item: int) -> str:
        return self.items_text[item]

    def history(self, user: int, seq) -> str:
        """History string of `user` over the item indices `seq` (oldest first); empty when `seq` is empty."""
        name = str(self.users[user])
        parts = []
        for item in list(seq)[::-1][: self.n]:
            text = self.reviews.get((name, int(item))) or self.items_text[int(item)]
            parts.append(_cut(text, self.words))
        return SEPARATOR.join(p for p in parts if p)


def contrastive_pairs(ds, writer: HistoryWriter, pairs_per_user: int, max_pairs: int,
                      seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """(queries, targets, target item indices) from each user's train sequence: the last `pairs_per_user` positions
    t >= 1, the query being the history before t and the target the text of item t; at most `max_pairs`, sampled
    with the seed. Pairs whose query or target text is empty are skipped."""
    queries, targets, items = [], [], []
    for u, seq in enumerate(ds.train_seqs):
        for t in range(max(1, len(seq) - pairs_per_user), len(seq)):
            q, d = writer.history(u, seq[:t]), writer.item_text(int(seq[t]))
            if q and d:
                queries.append(q)
                targets.append(d)
                items.append(int(seq[t]))
    if len(queries) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(queries), max_pairs, replace=False))
        queries, targets, items = [queries[i] for i in pick], [targets[i] for i in pick], [items[i] for i in pick]
    return queries, targets, np.asarray(items, dtype=np.int64)


def user_histories(ds, writer: HistoryWriter) -> list[str]:
    """One history string per user (dataset user order) over the whole train sequence."""
    return [writer.history(u, seq) for u, seq in enumerate(ds.train_seqs)]
