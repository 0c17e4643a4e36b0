"""Benchmark: candidate retrieval by faiss indexes (`prefmine.ranker.retrieval`) against the full-catalogue matmul.

Item vectors are synthetic and clustered like the ranker's: a Gaussian mixture (`n / 1000` centres, at least 64,
in `--dim` dimensions, 64 = the ranker's width), unnormalised (log-normal norms), so the score is a maximum inner
product. Queries play user states: a Dirichlet-weighted blend of two random centres plus noise. Per catalogue
size and method, in one process and one thread:

  build_s       seconds to build (IVF: k-means training on a seeded sample + adding), not counting data generation
  index_bytes   size of the index as faiss serialises it (`ItemIndex.save`), an estimate of its memory
  recall@10     mean |top 10 ∩ exact top 10| / 10 over the queries (exact: IndexFlatIP)
  recall@10_excl  the same with each query excluding 50 "seen" items: its exact top 25 and 25 random items (the
                hard case for over-fetching: the answer sits at ranks 26..60 of the unfiltered list)
  p50/p95/p99_ms  per-query latency of `ItemIndex.search(q[i:i+1], 10)` (batch 1), no exclusion
  batch64_qps   queries per second searching batches of 64
The baseline is the runtime's current path, `states @ item_vectors.T` then `prefmine.metrics.top_k` (matmul +
argpartition), timed the same way. HNSW and IVF are also timed at a few search settings (ef_search, nprobe) on
the same index. Threads: faiss and BLAS are limited to one thread (the project runs one per process); the HNSW
build may use `--build-threads`, recorded in the settings.

    python -m bench.retrieval --out RESULT.json [--quick] [--sizes 100000 1000000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from bench.data_scale import machine
from prefmine.metrics import top_k
from prefmine.ranker.retrieval import ItemIndex, RetrievalConfig

K = 10
N_SEEN = 50
HNSW_EF = (64, 128, 256)
IVF_NPROBE = (16, 64, 128)


def blas_one_thread():
    """Context limiting BLAS (numpy's matmul) to one thread, when threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - OMP_NUM_THREADS=1 does the same
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def item_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered, unnormalised float32 item vectors, generated in chunks to keep the peak near the result."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, n // 1000), dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        part = centres[rng.integers(0, len(centres), hi - lo)]
        part += 0.5 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        part *= rng.lognormal(0.0, 0.3, (hi - lo, 1)).astype(np.float32)
        x[lo:hi] = part
    return x, centres


def user_states(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(centres), (n, 2))
    w = rng.dirichlet((1.0, 1.0), n).astype(np.float32)
    q = w[:, :1] * centres[pairs[:, 0]] + w[:, 1:] * centres[pairs[:, 1]]
    return (q + 0.5 * rng.standard_normal(q.shape, dtype=np.float32)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found.tolist(), truth.tolist())]))


def timings(search, queries: np.ndarray) -> dict:
    """Batch-1 latency percentiles and batch-64 throughput of `search(queries) -> ids`."""
    search(queries[:8])  # warm-up
    lat = []
    for i in range(len(queries)):
        t = time.perf_counter()
        search(queries[i: i + 1])
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    for lo in range(0, len(queries), 64):
        search(queries[lo: lo + 64])
    qps = len(queries) / (time.perf_counter() - t)
    p50, p95, p99 = np.percentile(np.array(lat) * 1e3, [50, 95, 99])
    return {"p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4), "p99_ms": round(float(p99), 4),
            "batch64_qps": round(qps, 1)}


def index_bytes(index: ItemIndex) -> int:
    with tempfile.TemporaryDirectory(prefix="prefmine-bench-retrieval-") as d:
        return (index.save(d) / "index.faiss").stat().st_size


def measure(index: ItemIndex, queries, exclude, truth, truth_excl) -> dict:
    ids, _ = index.search(queries, K)
    ids_excl, _ = index.search(queries, K, exclude)
    if any(set(row) & ex for row, ex in zip(ids_excl.tolist(), exclude)):
        raise RuntimeError(f"{index.kind}: an excluded item came back")
    return {"recall@10": round(recall(ids, truth), 4), "recall@10_excl": round(recall(ids_excl, truth_excl), 4),
            **timings(lambda q: index.search(q, K), queries)}


def run_size(n: int, dim: int, n_queries: int, build_threads: int, seed: int) -> list[dict]:
    items, centres = item_vectors(n, dim, seed)
    queries = user_states(centres, n_queries, seed + 1)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append({"items": n, **row})
        print(json.dumps(rows[-1]), flush=True)

    # Ground truth from faiss exact; the baseline is the runtime's matmul + prefmine.metrics.top_k.
    t = time.perf_counter()
    exact = ItemIndex.build(items, RetrievalConfig(kind="exact"))
    build_s = time.perf_counter() - t
    truth, _ = exact.search(queries, K)
    rng = np.random.default_rng(seed + 2)
    top25, _ = exact.search(queries, 25)
    exclude = [set(row) | set(rng.integers(0, n, N_SEEN - 25).tolist()) for row in top25.tolist()]
    truth_excl, _ = exact.search(queries, K, exclude)
    with blas_one_thread():
        base = np.concatenate([top_k(queries[lo: lo + 64] @ items.T, K) for lo in range(0, len(queries), 64)])
        emit({"method": "numpy matmul+top_k", "param": None, "build_s": 0.0, "index_bytes": items.nbytes,
              "recall@10": round(recall(base, truth), 4),  # vs faiss exact: float rounding and ties only
              **timings(lambda q: top_k(q @ items.T, K), queries)})
    emit({"method": "exact", "param": "IndexFlatIP", "build_s": round(build_s, 2), "index_bytes": index_bytes(exact),
          **measure(exact, queries, exclude, truth, truth_excl)})
    del exact

    for kind, name, values in (("hnsw", "ef_search", HNSW_EF), ("ivf", "nprobe", IVF_NPROBE)):
        cfg = RetrievalConfig(kind=kind, threads=build_threads if kind == "hnsw" else 1)
        t = time.perf_counter()
        index = ItemIndex.build(items, cfg)
        build_s = time.perf_counter() - t
        size = index_bytes(index)
        extra = {"nlist": int(index.index.nlist)} if kind == "ivf" else {"m": cfg.m, "ef_construction": cfg.ef_construction}
        for v in values:
            index.configure(RetrievalConfig(**{**asdict(cfg), "threads": 1, name: v}))
            emit({"method": kind, "param": f"{name}={v}", "build_s": round(build_s, 2), "index_bytes": size, **extra,
                  **measure(index, queries, exclude, truth, truth_excl)})
        del index
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="10k and 100k items (a few minutes)")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--build-threads", type=int, default=1, help="faiss threads for the HNSW build only")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    sizes = a.sizes or ([10_000, 100_000] if a.quick else [100_000, 1_000_000])
    t0 = time.perf_counter()
    rows = []
    for n in sizes:
        rows += run_size(n, a.dim, a.queries, a.build_threads, a.seed)
    result = {"bench": "retrieval", "machine": machine(), "faiss": faiss.__version__, "settings": {
        "sizes": sizes, "dim": a.dim, "queries": a.queries, "k": K, "seen_excluded": N_SEEN, "seed": a.seed,
        "items": "Gaussian mixture, max(64, n/1000) centres, noise 0.5, log-normal(0, 0.3) norms (unnormalised)",
        "queries_like": "Dirichlet blend of 2 centres + noise 0.5", "metric": "inner product",
        "search_threads": 1, "blas_threads": 1, "hnsw_build_threads": a.build_threads,
        "defaults": asdict(RetrievalConfig()), "latency": "ItemIndex.search per query (batch 1), after warm-up"},
        "rows": rows, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "total_s": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("peak_rss_mb", "total_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
