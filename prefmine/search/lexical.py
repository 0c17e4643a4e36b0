"""The lexical retriever: a BM25 index (the bm25s library) over each item's title, brand and category names.

Saved as bm25s writes it: numpy arrays (`np.save(..., allow_pickle=False)`) and JSON, loaded back with
`allow_pickle=False`, so a bundle's index is never unpickled. Tokens are bm25s's (lower-cased words of two or
more characters, English stop words dropped, no stemming).
"""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np

INDEX_DIR = "lexical"
STOPWORDS = "en"


def tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), lower=True, stopwords=STOPWORDS, return_ids=False, show_progress=False)


class LexicalIndex:
    """BM25 scores of every item for a query."""

    def __init__(self, retriever: bm25s.BM25):
        self.retriever = retriever
        self.n_items = int(retriever.scores["num_docs"])

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.5, b: float = 0.75) -> LexicalIndex:
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(bm25s.tokenize(list(texts), lower=True, stopwords=STOPWORDS, show_progress=False),
                        show_progress=False)
        return cls(retriever)

    def save(self, d: Path) -> Path:
        out = Path(d) / INDEX_DIR
        self.retriever.save(out, allow_pickle=False, show_progress=False)
        return out

    @classmethod
    def load(cls, d: Path) -> LexicalIndex:
        """The index saved under `d` (the folder `save` was given)."""
        return cls(bm25s.BM25.load(Path(d) / INDEX_DIR, allow_pickle=False, mmap=False, show_progress=False))

    @staticmethod
    def exists(d: Path) -> bool:
        return (Path(d) / INDEX_DIR / "params.index.json").is_file()

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every item (0 where no query term occurs); all zeros for a query with no indexed term."""
        ids = self.retriever.get_tokens_ids(tokens([query])[0])
        if not ids:
            return np.zeros(self.n_items, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)


class SideIndex:
    """A lexical index with items appended after it was built: the appended items are indexed in a small BM25
    index of their own (built at once; rebuilding the main one would take seconds at a million items) and their
    scores follow the main index's. Their scores use their own index's term statistics, so a new item's BM25
    score is on the same formula but not the same corpus as the others' (fusion ranks both)."""

    def __init__(self, main, texts: list[str]):
        self.main = main
        self.side = LexicalIndex.build(texts) if texts else None
        self.n_items = main.n_items + len(texts)

    def scores(self, query: str) -> np.ndarray:
        side = self.side.scores(query) if self.side is not None else np.zeros(0, np.float32)
        return np.concatenate([self.main.scores(query), side])
