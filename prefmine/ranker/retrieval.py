"""Candidate retrieval: the top items for a user state by inner product, from an index instead of a full matmul.

`RankerRuntime` scores a user state against every item vector (`states @ item_vectors.T`) and takes the top N;
that is linear in the catalogue and, at a million items, too slow per request. `ItemIndex` wraps a faiss index
over the item vectors with the same score (inner product: the ranker's item vectors are not normalised, so
this is maximum-inner-product search, not cosine) and three kinds:

  exact  IndexFlatIP: the matmul, in faiss (the reference).
  hnsw   IndexHNSWFlat, METRIC_INNER_PRODUCT: a graph; no training, but slow to build and ~2x the vectors' memory.
  ivf    IndexIVFFlat, METRIC_INNER_PRODUCT: k-means lists, trained on a seeded sample; `nprobe` of `nlist`
         lists are scanned per query (nprobe = nlist is exact).

`kind="auto"` is exact below `cfg.exact_below` items (50k by default; `RankerRuntime` then keeps its numpy
matmul + `prefmine.metrics.top_k`, bit-identical to before) and IVF from there, nprobe=32 by default. IVF was
chosen over HNSW by `python -m bench.retrieval` (figures and the reasoning in bench/README.md): at equal or
higher recall it is faster, keeps its recall when seen items are excluded (it scans whole lists, so the
over-fetched ranks are as good as the top 10), builds faster and needs half the memory. Below 50k items the
exact answer costs a few ms per query and is kept.

Exclusion (a user's seen items): `search` over-fetches k + the largest exclude set of the batch (HNSW also
widens its candidate list by as much), drops excluded ids and keeps the best k. A row left with fewer than k
valid ids (IVF: the probed lists hold too few items; HNSW: the graph search found too few) is searched again
exhaustively (the flat storage of HNSW, all lists of IVF) with the same over-fetch, so excluded ids never come
back and a row has k results whenever the catalogue has k items outside its exclude set; only then is it padded
with id -1 and score -inf. Scores are float32 as faiss computes them; within the returned rows ties are ordered
by the lower item id (as `prefmine.metrics.top_k` does), but which of several items tied at the k-th score is
returned is faiss's choice.

faiss runs OpenMP threads; this project runs one thread per process, so every index sets
`faiss.omp_set_num_threads(cfg.threads)` (1 by default) on build, load and search (a process-wide setting).
Search-time settings (ef_search, nprobe) are passed per call as faiss SearchParameters, not set on the index.
`save(dir, name)` writes `<name>.faiss` and `<name>.json` (config, n, dim, resolved kind, a few probe rows of the
vectors), each written aside and renamed into place, the JSON last; `load(dir, name)` checks that the two agree
and `matches(vectors)` that an index still belongs to a set of item vectors. No torch or Ray here.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np

KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_EXACT_BELOW = 50_000
INDEX_NAME = "index"  # files <name>.faiss and <name>.json
EXACT_BLAS_FROM_QUERIES = 4  # exact search: a batch of at least this many queries goes through BLAS
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 points per list (faiss wants 39..256), at most all items
PROBE_ROWS = 8  # rows of the item vectors kept in the JSON to tell whether an index still fits the vectors


@dataclass
class RetrievalConfig:
    kind: str = "auto"  # "exact" | "hnsw" | "ivf" | "auto" (exact below exact_below items, else ivf)
    exact_below: int = AUTO_EXACT_BELOW  # auto: catalogues smaller than this are searched exactly
    m: int = 32  # HNSW: neighbours per node
    ef_construction: int = 200  # HNSW: candidate list while building
    ef_search: int = 128  # HNSW: candidate list while searching (plus the over-fetch when excluding)
    nlist: int = 0  # IVF: lists; 0 = about 4 * sqrt(n), at most n / 39
    nprobe: int = 32  # IVF: lists scanned per query (capped at nlist)
    seed: int = 0  # IVF: training sample and k-means seed
    threads: int = 1  # faiss OpenMP threads (process-wide)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"retrieval kind must be one of {KINDS}, got {self.kind!r}")
        for name, low in (("exact_below", 0), ("m", 2), ("ef_construction", 1), ("ef_search", 1), ("nlist", 0),
                          ("nprobe", 1), ("seed", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"retrieval {name} must be an integer >= {low}, got {value!r}")
            if value >= 2**31:
                raise ValueError(f"retrieval {name} must be below 2**31, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "retrieval config", ignore_unknown: bool = False) -> RetrievalConfig:
        """The config a dict names; an unknown field is an error, or, with ``ignore_unknown`` (a bundle's
        recorded config, which another version of this code may have written), left out."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and not ignore_unknown:
            raise ValueError(f"{where}: unknown retrieval field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_kind(cfg: RetrievalConfig, n: int) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "exact" if n < cfg.exact_below else "ivf"


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


def _kind_of(index: faiss.Index) -> str:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "exact"
    raise ValueError(f"unsupported faiss index type {type(index).__name__}")


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


def _probe(x: np.ndarray) -> dict:
    rows = np.unique(np.linspace(0, len(x) - 1, PROBE_ROWS).astype(np.int64))
    return {"rows": rows.tolist(), "vectors": x[rows].astype(np.float32).tolist()}


def _exclude_size(ex) -> int:
    return 0 if ex is None else len(ex)


class ItemIndex:
    """Item vectors behind a faiss inner-product index; `search` returns (ids [q, k], scores [q, k])."""

    def __init__(self, index: faiss.Index, cfg: RetrievalConfig, kind: str, probe: dict | None = None):
        if _kind_of(index) != kind:
            raise ValueError(f"index kind {kind!r} does not match the faiss index ({_kind_of(index)})")
        self.index, self.kind, self.probe = index, kind, probe  # index: a concrete faiss type
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
        return cls(_build_faiss(x, kind, cfg), cfg, kind, _probe(x))

    def configure(self, cfg: RetrievalConfig) -> None:
        """Use the search-time settings of `cfg` (threads, ef_search, nprobe) from now on; no rebuild."""
        self.cfg = cfg
        faiss.omp_set_num_threads(cfg.threads)

    def matches(self, vectors: np.ndarray, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
        """Whether this index was built from `vectors`: same shape and the same probe rows (within float noise)."""
        if vectors.shape != (self.n, self.dim) or not self.probe:
            return False
        rows = np.asarray(self.probe["rows"], dtype=np.int64)
        return bool(np.allclose(np.asarray(vectors[rows], dtype=np.float32),
                                np.asarray(self.probe["vectors"], dtype=np.float32), rtol=rtol, atol=atol))

    def _raw_search(self, q: np.ndarray, fetch: int, widen: int = 0, exhaustive: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss search for `fetch` ids per query; `exhaustive` scans every item (exact top `fetch`)."""
        if self.kind == "exact" or (exhaustive and self.kind == "hnsw"):
            flat = self.index if self.kind == "exact" else faiss.downcast_index(self.index.storage)
            # faiss 1.15 multiplies by BLAS only from queries * dim >= 128000 (2000 queries at dim 64); on one
            # thread BLAS is faster from ~4 queries (6-8x at 64 queries x 100k items), so switch there.
            before = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = EXACT_BLAS_FROM_QUERIES * self.dim
            try:
                scores, ids = flat.search(q, fetch)
            finally:
                faiss.cvar.distance_compute_blas_threshold = before
        elif self.kind == "hnsw":
            # faiss searches with max(efSearch, fetch) candidates; the over-fetch for exclusion widens it further
            # so ranks k+1..fetch are found about as reliably as the top k would be.
            params = faiss.SearchParametersHNSW(efSearch=self.cfg.ef_search + widen)
            scores, ids = self.index.search(q, fetch, params=params)
        else:
            nlist = int(self.index.nlist)
            params = faiss.SearchParametersIVF(nprobe=nlist if exhaustive else min(self.cfg.nprobe, nlist))
            scores, ids = self.index.search(q, fetch, params=params)
        ids = ids.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return ids, scores

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and inner-product scores per query, best first, never an id from `exclude[row]`.

        `exclude` holds one collection of item ids (or None) per query. Rows are padded with id -1 and score -inf
        only when fewer than k items are left outside their exclude set.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = _as_matrix(queries, "queries", self.dim)
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        faiss.omp_set_num_threads(self.cfg.threads)
        k = int(k)
        largest = max((_exclude_size(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(self.n, k + largest)
        ids, scores = self._raw_search(q, fetch, widen=fetch - min(k, self.n))
        if largest == 0 and fetch == k and (ids >= 0).all():  # the common case: nothing to exclude, k found
            order = np.lexsort((ids, -scores), axis=1)  # ties: lower id first
            return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        short = self._fill(ids, scores, np.arange(len(q)), exclude, k, out_ids, out_scores)
        if short and self.kind != "exact":
            # The approximate search left these rows short of k valid ids: search them exhaustively.
            rows = np.asarray(short)
            over = max(_exclude_size(exclude[r]) for r in short) if exclude is not None else 0
            fetch = min(self.n, k + over)
            ids, scores = self._raw_search(q[rows], fetch, exhaustive=True)
            self._fill(ids, scores, rows, exclude, k, out_ids, out_scores)
        return out_ids, out_scores

    @staticmethod
    def _fill(ids, scores, rows, exclude, k, out_ids, out_scores) -> list[int]:
        """Write each row's best k non-excluded ids (ties: lower id first) into out_*; return the short rows."""
        short = []
        for j, row in enumerate(rows):
            keep = ids[j] >= 0
            ex = exclude[row] if exclude is not None else None
            if ex is not None and len(ex):
                keep &= ~np.isin(ids[j], np.fromiter(ex, dtype=np.int64, count=len(ex)))
            got_ids, got_scores = ids[j][keep], scores[j][keep]
            order = np.lexsort((got_ids, -got_scores))[:k]
            out_ids[row, : len(order)], out_scores[row, : len(order)] = got_ids[order], got_scores[order]
            if len(order) < k:
                short.append(int(row))
        return short

    def save(self, d: str | Path, name: str = INDEX_NAME) -> Path:
        """Write `<d>/<name>.faiss` and `<d>/<name>.json` (each written aside, then renamed; the JSON last)."""
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.cfg), "kind": self.kind, "n": self.n, "dim": self.dim,
                "faiss": faiss.__version__, "probe": self.probe}
        tmp_index, tmp_meta = d / f".{name}.faiss.tmp", d / f".{name}.json.tmp"
        faiss.write_index(self.index, str(tmp_index))
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_index, d / f"{name}.faiss")
        os.replace(tmp_meta, d / f"{name}.json")
        return d

    @classmethod
    def load(cls, d: str | Path, name: str = INDEX_NAME, cfg: RetrievalConfig | None = None) -> ItemIndex:
        """Read an index `save` wrote; `cfg` replaces the saved search-time settings (threads, ef_search, nprobe)."""
        d = Path(d)
        meta_path, index_path = d / f"{name}.json", d / f"{name}.faiss"
        for path in (meta_path, index_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (write the index with ItemIndex.save)")
        try:
            meta = json.loads(meta_path.read_text())
            saved = RetrievalConfig.from_dict(meta["config"], str(meta_path))
            kind, n, dim = meta["kind"], int(meta["n"]), int(meta["dim"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_path} is not an index description ({type(e).__name__}: {e})") from e
        faiss.omp_set_num_threads((cfg or saved).threads)
        index = faiss.read_index(str(index_path))
        if index.ntotal != n or index.d != dim or _kind_of(index) != kind:
            raise ValueError(f"{d}: {index_path.name} holds a {_kind_of(index)} index of {index.ntotal} x "
                             f"{index.d}, {meta_path.name} says {kind} {n} x {dim} (a save was interrupted?)")
        return cls(index, cfg or saved, kind, meta.get("probe"))


SERVING_INDEX = "item_index"  # <ranker dir>/item_index.faiss + item_index.json, beside model.pt


def write_item_index(d: str | Path, vectors: np.ndarray, cfg: RetrievalConfig | None = None,
                     name: str = SERVING_INDEX) -> ItemIndex | None:
    """Build and save the serving index of a ranker directory; None (and no files) when `cfg` resolves to exact.

    Files an earlier index left there are removed first, so a directory never pairs new vectors with an old index.
    """
    d, cfg = Path(d), cfg or RetrievalConfig()
    for suffix in (".json", ".faiss"):  # the JSON first: without it the index is not used
        (d / f"{name}{suffix}").unlink(missing_ok=True)
    if resolve_kind(cfg, len(vectors)) == "exact":
        return None
    index = ItemIndex.build(vectors, cfg)
    index.save(d, name)
    return index


def open_item_index(d: str | Path, vectors: np.ndarray, cfg: RetrievalConfig | None = None,
                    name: str = SERVING_INDEX, log=None) -> ItemIndex | None:
    """The serving index for `vectors`: None when retrieval is exact (the caller keeps its matmul), else the index
    saved in `d` when it was built from these vectors with the kind wanted, else one built now (logged: slow at
    a million items; bundles written before the index existed take this path).

    `cfg` None: the configuration saved with the index, or the defaults when there is none. A given `cfg` decides
    the kind (auto: by the number of items) and its search settings apply to a loaded index.
    """
    d = Path(d)
    saved = None
    if (d / f"{name}.json").is_file():
        try:
            saved = ItemIndex.load(d, name, cfg)
        except (OSError, ValueError, RuntimeError) as e:  # faiss raises RuntimeError on a damaged file
            if log:
                log(f"{d / name}: unreadable ({type(e).__name__}: {e}); rebuilding it")
    want = cfg or (saved.cfg if saved is not None else RetrievalConfig())
    kind = resolve_kind(want, len(vectors))
    if kind == "exact":
        return None
    if saved is not None and saved.kind == kind and saved.matches(vectors):
        return saved
    if log:
        reason = "none saved" if saved is None else "the saved one does not match the item vectors or kind"
        log(f"{d / name}: building a {kind} index over {len(vectors)} items ({reason})")
    return ItemIndex.build(vectors, want)


def save_retrieval_index(ranker_dir: Path, cfg: RetrievalConfig | None = None) -> dict:
    """Write the serving index of a saved ranker (none below the exact threshold); what was built, for the manifest."""
    from prefmine.ranker.runtime import load_ranker, ranker_item_vectors  # runtime imports this module

    t = time.perf_counter()
    vectors = ranker_item_vectors(load_ranker(ranker_dir))
    index = write_item_index(ranker_dir, vectors, cfg)
    return {"kind": index.kind if index is not None else "exact", "items": int(len(vectors)),
            "build_seconds": round(time.perf_counter() - t, 2)}
