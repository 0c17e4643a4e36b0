"""Candidate retrieval: the top items for a user state by inner product, from an index instead of a full matmul.

`RankerRuntime` scores a user state against every item vector (`states @ item_vectors.T`) and takes the top N;
that is linear in the catalogue and, at a million items, too slow per request. `ItemIndex` wraps a faiss index
over the item vectors with the same score (inner product: the ranker's item vectors are not normalised, so
this is maximum-inner-product search, not cosine) and three kinds:

  exact  IndexFlatIP: the matmul, in faiss (the reference; fine below ~50k items).
  hnsw   IndexHNSWFlat, METRIC_INNER_PRODUCT: a graph; fast queries, no training, ~2x the vectors' memory.
  ivf    IndexIVFFlat, METRIC_INNER_PRODUCT: k-means lists, trained on a seeded sample; `nprobe` of `nlist`
         lists are scanned per query (nprobe = nlist is exact).

`kind="auto"` picks exact below `AUTO_EXACT_BELOW` items and HNSW above. `search` excludes items (a user's seen
items) by over-fetching k + the largest exclude set, so excluded ids never come back and k results remain
whenever the catalogue has k items left; rows are padded with id -1 and score -inf only when it has not.
Over-fetching asks HNSW for ranks up to k + |exclude|, which its graph search finds less reliably than the top
k: when the excluded items are the user's own best-scoring ones (seen items usually are), HNSW recall drops
(bench/retrieval.py, `recall@10_excl`); IVF scans whole lists and keeps its recall.
Scores are float32 as faiss computes them; ties are in faiss's order (`prefmine.metrics.top_k` breaks ties by
the lower item index, so the two can differ between items of exactly equal score).

faiss runs OpenMP threads; this project runs one thread per process, so every index sets
`faiss.omp_set_num_threads(cfg.threads)` (1 by default) on build, load and search (a process-wide setting).
`save(dir)` writes `index.faiss` and `index.json` (config, n, dim, resolved kind), each written aside and
renamed into place, the JSON last; `load(dir)` checks the two agree. No torch or Ray here.

Use in `RankerRuntime.top_n` (not wired in yet): get the index once, at load, and per request call
`ids, scores = index.search(states, n, exclude)` in place of `states @ item_vectors.T` + `top_k`; ids are
0-based rows of `item_vectors`, as `top_k` returns. Empty histories (cold start) keep the popularity ranking.
Build at 1M items is slow on one thread (bench: HNSW ~30 min, IVF ~45 s), so build it when the bundle is
written (`ItemIndex.build(item_vectors, cfg).save(bundle / "ranker" / "index")`) and `ItemIndex.load` it in
`RankerRuntime.__init__`, rebuilding only when `index.n` no longer matches the item count.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_EXACT_BELOW = 50_000
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
EXACT_BLAS_FROM_QUERIES = 4  # exact search: a batch of at least this many queries goes through BLAS
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 points per list (faiss wants 39..256), at most all items


@dataclass
class RetrievalConfig:
    kind: str = "auto"  # "exact" | "hnsw" | "ivf" | "auto" (exact below AUTO_EXACT_BELOW items, else hnsw)
    m: int = 32  # HNSW: neighbours per node
    ef_construction: int = 200  # HNSW: candidate list while building
    ef_search: int = 128  # HNSW: candidate list while searching (raised to k when k is larger)
    nlist: int = 0  # IVF: lists; 0 = about 4 * sqrt(n), at most n / 39
    nprobe: int = 16  # IVF: lists scanned per query (capped at nlist)
    seed: int = 0  # IVF: training sample and k-means seed
    threads: int = 1  # faiss OpenMP threads (process-wide)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"retrieval kind must be one of {KINDS}, got {self.kind!r}")
        for name, low in (("m", 2), ("ef_construction", 1), ("ef_search", 1), ("nlist", 0), ("nprobe", 1),
                          ("seed", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"retrieval {name} must be an integer >= {low}, got {value!r}")
            if value >= 2**31:
                raise ValueError(f"retrieval {name} must be below 2**31, got {value!r}")


def resolve_kind(cfg: RetrievalConfig, n: int) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "exact" if n < AUTO_EXACT_BELOW else "hnsw"


def resolve_nlist(cfg: RetrievalConfig, n: int) -> int:
    """Configured nlist, or about 4 * sqrt(n) kept at most n / 39 (faiss's minimum of points per list)."""
    if cfg.nlist:
        if cfg.nlist > n:
            raise ValueError(f"retrieval nlist ({cfg.nlist}) must not exceed the number of items ({n})")
        return cfg.nlist
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def _as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, the index {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return x


def _build_faiss(x: np.ndarray, kind: str, cfg: RetrievalConfig) -> faiss.Index:
    n, d = x.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
    else:
        nlist = resolve_nlist(cfg, n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        sample = min(n, IVF_TRAIN_PER_LIST * nlist)
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=sample, replace=False))
        index.train(x[rows])
    index.add(x)
    return index


class ItemIndex:
    """Item vectors behind a faiss inner-product index; `search` returns (ids [q, k], scores [q, k])."""

    def __init__(self, index: faiss.Index, cfg: RetrievalConfig, kind: str):
        self.index, self.kind = index, kind
        self.configure(cfg)

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: RetrievalConfig | None = None) -> ItemIndex:
        cfg = cfg or RetrievalConfig()
        faiss.omp_set_num_threads(cfg.threads)
        x = _as_matrix(vectors, "item vectors")
        kind = resolve_kind(cfg, len(x))
        return cls(_build_faiss(x, kind, cfg), cfg, kind)

    def configure(self, cfg: RetrievalConfig) -> None:
        """Apply the search-time settings of `cfg` (threads, ef_search, nprobe); no rebuild."""
        self.cfg = cfg
        faiss.omp_set_num_threads(cfg.threads)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = self.cfg.ef_search
        elif self.kind == "ivf":
            self.index.nprobe = min(self.cfg.nprobe, self.index.nlist)

    def _raw_search(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "exact":
            # faiss 1.15 multiplies by BLAS only from queries * dim >= 128000 (2000 queries at dim 64); on one
            # thread BLAS is faster from ~4 queries (6-8x at 64 queries x 100k items), so switch there.
            before = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = EXACT_BLAS_FROM_QUERIES * self.dim
            try:
                scores, ids = self.index.search(q, fetch)
            finally:
                faiss.cvar.distance_compute_blas_threshold = before
        else:
            scores, ids = self.index.search(q, fetch)  # HNSW searches with max(efSearch, fetch) candidates
        scores[ids < 0] = -np.inf
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int] | None] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and inner-product scores per query, best first, never an id from `exclude[row]`."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = _as_matrix(queries, "queries", self.dim)
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        faiss.omp_set_num_threads(self.cfg.threads)
        largest = max((len(e) for e in exclude if e), default=0) if exclude is not None else 0
        fetch = min(self.n, k + largest)
        if largest == 0:  # no exclusion: one search, padded when the catalogue is smaller than k
            ids, scores = self._raw_search(q, fetch)
            if fetch == k and (fetch == self.n or (ids >= 0).all()):
                return ids, scores
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.arange(len(q))
        while True:
            ids, scores = self._raw_search(q[rows], fetch)
            short = []
            for j, row in enumerate(rows):
                keep = ids[j] >= 0
                if exclude is not None and exclude[row]:
                    keep &= ~np.isin(ids[j], np.fromiter(exclude[row], dtype=np.int64))
                got_ids, got_scores = ids[j][keep][:k], scores[j][keep][:k]
                out_ids[row, : len(got_ids)], out_scores[row, : len(got_ids)] = got_ids, got_scores
                if len(got_ids) < k:
                    short.append(row)
            # A row can come back short when the index returns fewer than `fetch` items (IVF lists too small,
            # HNSW candidate list exhausted): fetch more for those rows until the whole catalogue was asked for.
            if not short or fetch >= self.n:
                return out_ids, out_scores
            rows, fetch = np.asarray(short), min(self.n, 2 * fetch)

    def save(self, d: str | Path) -> Path:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.cfg), "kind": self.kind, "n": self.n, "dim": self.dim,
                "faiss": faiss.__version__}
        tmp_index, tmp_meta = d / f".{INDEX_FILE}.tmp", d / f".{META_FILE}.tmp"
        faiss.write_index(self.index, str(tmp_index))
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_index, d / INDEX_FILE)
        os.replace(tmp_meta, d / META_FILE)
        return d

    @classmethod
    def load(cls, d: str | Path) -> ItemIndex:
        d = Path(d)
        meta = json.loads((d / META_FILE).read_text())
        cfg = RetrievalConfig(**meta["config"])
        faiss.omp_set_num_threads(cfg.threads)
        index = faiss.read_index(str(d / INDEX_FILE))
        if index.ntotal != meta["n"] or index.d != meta["dim"]:
            raise ValueError(f"{d}: {INDEX_FILE} holds {index.ntotal} x {index.d}, {META_FILE} says "
                             f"{meta['n']} x {meta['dim']} (a save was interrupted?)")
        return cls(index, cfg, meta["kind"])
