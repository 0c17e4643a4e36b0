"""Search's part of a model bundle: the BM25 index over the bundle's catalogue and its search config, saved in
`ranker/search/` beside the ranker's retrieval index by the ranker job, and loaded by serving with the encoder's
item text embeddings as the dense side. A bundle without it (made before it existed) is served by dense
retrieval alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.search.catalog import Catalog
from prefmine.search.config import SearchConfig
from prefmine.search.engine import Searcher, save_index
from prefmine.search.lexical import LexicalIndex

SEARCH_DIR = Path("ranker") / "search"


def index_dir(bundle: str | Path) -> Path:
    return Path(bundle) / SEARCH_DIR


def has_index(bundle: str | Path) -> bool:
    """Whether the bundle carries a lexical index (Search is hybrid) or not (dense only)."""
    return LexicalIndex.exists(index_dir(bundle))


def save_bundle_index(bundle: str | Path, config: SearchConfig | None = None,
                      items: pd.DataFrame | None = None) -> dict:
    """Build the BM25 index over the bundle's catalogue and save it with `config` under `ranker/search/`; what the
    manifest records about it. `items`: the prepared data set's item table (the same items in the same order as
    `catalog/items.parquet`, which keeps no descriptions: serving holds every item's row in memory), so that
    `lexical_fields` naming the description index it; default, the bundle's catalogue."""
    table = catalog_items(bundle)
    if items is not None:
        if list(map(str, items["item"])) != list(map(str, table["item"])):
            raise ValueError("save_bundle_index: `items` are not the bundle catalogue's items in its order")
        table = items
    catalog = Catalog.from_items(table)
    config = config or SearchConfig()
    save_index(index_dir(bundle), catalog, config)
    return {"dir": SEARCH_DIR.as_posix(), "items": len(catalog), "fusion": config.fusion,
            "lexical_fields": list(config.lexical_fields)}


def load_bundle_searcher(bundle: str | Path, item_vectors: np.ndarray) -> Searcher | None:
    """The bundle's hybrid searcher over `item_vectors` (the encoder's item text embeddings), None without an
    index."""
    if not has_index(bundle):
        return None
    return Searcher.load(index_dir(bundle), Catalog.from_items(catalog_items(bundle)), item_vectors)


def catalog_items(bundle: str | Path) -> pd.DataFrame:
    """The bundle's item table (`catalog/items.parquet`, in item-index order), without the histories."""
    return pd.read_parquet(Path(bundle) / "catalog" / "items.parquet")
