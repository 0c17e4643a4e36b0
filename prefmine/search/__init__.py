"""Search that finds things: a BM25 lexical index (bm25s) fused with the dense encoder's item vectors, personalised
by the ranker's scores for the user's history, with request-time filters and facet counts.

Ray-free; the serving layer and the benchmark (`bench.search_relevance`) call `engine.search`.
"""

from prefmine.search.config import SearchConfig
from prefmine.search.engine import Searcher, SearchHit, search

__all__ = ["SearchConfig", "SearchHit", "Searcher", "search"]
