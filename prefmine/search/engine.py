"""Search: filter the catalogue, pool the lexical and dense top candidates among the items that qualify, fuse,
personalise, count facets, return the top k.

Two steps, so a caller whose personal scores come from elsewhere (the served ranker) scores only the pool:
`Searcher.retrieve` (no user) then `Searcher.finish` (with the user's scores for the pool's items). `search` runs
both with personal scores given for every item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefmine.search.catalog import Catalog
from prefmine.search.config import SearchConfig
from prefmine.search.facets import facet_counts
from prefmine.search.filters import SearchFilters
from prefmine.search.fusion import fuse, personalise
from prefmine.search.lexical import LexicalIndex, SideIndex

NO_FILTERS = SearchFilters()


@dataclass
class Pool:
    """The candidates of one query: item indices with their lexical, dense and fused scores, the matched set's
    facet counts and how many items passed the filters."""

    idx: np.ndarray
    lexical: np.ndarray
    dense: np.ndarray
    fused: np.ndarray
    matched: np.ndarray
    facets: dict = field(default_factory=dict)
    qualifying: int = 0


@dataclass
class SearchHit:
    """The top k: item indices, final scores and the parts they came from (`personal` is NaN without a user)."""

    idx: np.ndarray
    score: np.ndarray
    lexical: np.ndarray
    dense: np.ndarray
    personal: np.ndarray
    facets: dict
    matched: np.ndarray
    qualifying: int


def _top(scores: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores among `allowed` (indices), highest first, ties by index."""
    if len(allowed) == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    s = scores[allowed]
    n = min(n, len(allowed))
    part = np.argpartition(-s, n - 1)[:n] if n < len(allowed) else np.arange(len(allowed))
    part = part[np.lexsort((allowed[part], -s[part]))]
    return allowed[part].astype(np.int64)


def unit_rows(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class Searcher:
    """One catalogue's search: its catalogue fields, BM25 index and unit-length dense item vectors."""

    def __init__(self, catalog: Catalog, lexical: LexicalIndex, item_vectors: np.ndarray,
                 config: SearchConfig | None = None):
        if not (len(catalog) == lexical.n_items == len(item_vectors)):
            raise ValueError(f"catalogue ({len(catalog)}), lexical index ({lexical.n_items}) and item vectors "
                             f"({len(item_vectors)}) disagree on the number of items")
        self.catalog = catalog
        self.lexical = lexical
        self.unit = unit_rows(item_vectors)
        self.config = config or SearchConfig()

    @classmethod
    def load(cls, d: Path, catalog: Catalog, item_vectors: np.ndarray) -> Searcher:
        """The searcher whose lexical index and config were saved in `d` (`save_index`)."""
        return cls(catalog, LexicalIndex.load(d), item_vectors, SearchConfig.load(d))

    def extended(self, catalog: Catalog, item_vectors: np.ndarray) -> Searcher:
        """This searcher with items appended (their catalogue fields and dense vectors; row i of `catalog` is item
        len(self.catalog) + i): indexed lexically in a side index (lexical.SideIndex), searched and filtered like
        every item."""
        s = object.__new__(Searcher)
        s.catalog = Catalog(self.catalog.titles + catalog.titles, self.catalog.brands + catalog.brands,
                            self.catalog.categories + catalog.categories,
                            np.concatenate([self.catalog.price, catalog.price]),
                            np.concatenate([self.catalog.available, catalog.available]),
                            self.catalog.kinds + catalog.kinds, self.catalog.descriptions + catalog.descriptions)
        s.lexical = SideIndex(self.lexical, catalog.index_texts(self.config.lexical_fields))
        s.unit = np.concatenate([self.unit, unit_rows(item_vectors)]) if len(catalog) else self.unit
        s.config = self.config
        return s

    def with_config(self, config: SearchConfig) -> Searcher:
        s = object.__new__(Searcher)
        s.__dict__.update(self.__dict__)
        s.config = config
        return s

    def retrieve(self, query: str, query_vector: np.ndarray, k: int, filters: SearchFilters = NO_FILTERS,
                 lexical_scores: np.ndarray | None = None, mask: np.ndarray | None = None) -> Pool:
        """The pool for a query: among the items that pass `filters`, the top `candidates` (at least k) by BM25
        (items with a query term) and by cosine, fused. The matched set, which the facets count, is every
        qualifying item with a query term plus the dense top candidates. `lexical_scores`: precomputed BM25 scores
        of every item (the benchmark reuses them across settings). `mask`: a boolean mask over the catalogue that
        items must also pass (the serving layer's request-time rules, prefmine.rules.eligible)."""
        cfg = self.config
        keep = filters.mask(self.catalog) if not filters.empty else np.ones(len(self.catalog), dtype=bool)
        if mask is not None:
            keep = keep & np.asarray(mask, dtype=bool)
        allowed = np.flatnonzero(keep)
        lex_all = self.lexical.scores(query) if lexical_scores is None else lexical_scores
        q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        dense_all = self.unit @ q
        n = max(int(cfg.candidates), int(k))
        lex_hits = allowed[lex_all[allowed] > 0]
        by_dense = _top(dense_all, allowed, n)
        idx = np.union1d(_top(lex_all, lex_hits, n), by_dense).astype(np.int64)
        lex, dense = lex_all[idx].astype(np.float64), dense_all[idx].astype(np.float64)
        fused = fuse(lex, dense, cfg.fusion, cfg.lexical_weight, cfg.rrf_k)
        matched = np.union1d(lex_hits, by_dense).astype(np.int64)
        return Pool(idx, lex, dense, fused, matched, facet_counts(self.catalog, matched, cfg.facet_limit),
                    int(len(allowed)))

    def finish(self, pool: Pool, k: int, personal: np.ndarray | None = None) -> SearchHit:
        """The top k of the pool; `personal`: the user's ranker scores for `pool.idx` (None: no user)."""
        return finish(pool, k, personal, self.config)


def finish(pool: Pool, k: int, personal: np.ndarray | None, config: SearchConfig) -> SearchHit:
    """The top k of a pool under `config` (its personal weight); a function so that a caller holding the pool
    but not the searcher (the serving ingress, whose personal scores come from the ranker) can finish it."""
    final = personalise(pool.fused, personal, config.personal_weight)
    order = np.lexsort((pool.idx, -final))[: int(k)]
    p = np.full(len(order), np.nan) if personal is None else np.asarray(personal, np.float64)[order]
    return SearchHit(pool.idx[order], final[order], pool.lexical[order], pool.dense[order], p, pool.facets,
                     pool.matched, pool.qualifying)


def search(searcher: Searcher, query: str, query_vector: np.ndarray, k: int, filters: SearchFilters = NO_FILTERS,
           personal_all: np.ndarray | None = None) -> SearchHit:
    """Retrieve and finish in one call; `personal_all`: the user's ranker score of every item (None: no user)."""
    pool = searcher.retrieve(query, query_vector, k, filters)
    return searcher.finish(pool, k, None if personal_all is None else np.asarray(personal_all)[pool.idx])


def save_index(d: Path, catalog: Catalog, config: SearchConfig | None = None) -> Path:
    """Build the BM25 index over the catalogue's texts (the config's `lexical_fields`) and save it (and the config)
    under `d`: what a bundle carries for Search."""
    config = config or SearchConfig()
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    LexicalIndex.build(catalog.index_texts(config.lexical_fields), config.bm25_k1, config.bm25_b).save(d)
    config.save(d)
    return d


__all__ = ["Pool", "SearchHit", "Searcher", "finish", "save_index", "search"]
