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
`sizes[]` (DESIGN.md's headline keys) repeats, per size, the row of what `kind="auto"` serves by default.
The baseline is the runtime's exact path, `states @ item_vectors.T` then `prefmine.metrics.top_k` (matmul +
argpartition), timed the same way. The two full-catalogue methods (numpy, faiss exact) are timed on the first
`--timed-exact` queries (256) to keep the run short; recall always uses all queries. IVF (the default config, a
few nprobe) and HNSW (M=32, efConstruction=64 by default: a cheaper build than
the library default of 200; M=16 builds no faster here and its graph finds ranks 26..35 far less reliably, ~0.65
at 20k items, which is what exclusion needs; a few ef_search) are each built once per size. HNSW is added in chunks and given up once its build has
taken `--hnsw-budget-s` (480 s), which the row then says. Threads: faiss and BLAS are limited to one thread (the
project runs one per process); the HNSW build may use `--build-threads`, recorded in the settings. The JSON is
rewritten after every row.

    python -m bench.retrieval [--out RESULT.json] [--quick] [--plan] [--sizes 100000 1000000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from bench.common import add_common, default_out, print_plan
from bench.data_scale import machine
from prefmine.metrics import top_k
from prefmine.ranker.retrieval import ItemIndex, RetrievalConfig, resolve_kind

K = 10
N_SEEN = 50
HNSW_EF = (64, 128, 256)
IVF_NPROBE = (8, 16, 32, 64)


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
            "batch64_qps": round(qps, 1), "timed_queries": len(queries)}


def index_bytes(index: ItemIndex) -> int:
    with tempfile.TemporaryDirectory(prefix="prefmine-bench-retrieval-") as d:
        return (index.save(d) / "index.faiss").stat().st_size


def measure(index: ItemIndex, queries, exclude, truth, truth_excl, timed: int) -> dict:
    ids, _ = index.search(queries, K)
    ids_excl, _ = index.search(queries, K, exclude)
    if any(set(row) & ex for row, ex in zip(ids_excl.tolist(), exclude)) or (ids_excl < 0).any():
        raise RuntimeError(f"{index.kind}: an excluded item came back, or fewer than {K}")
    return {"recall@10": round(recall(ids, truth), 4), "recall@10_excl": round(recall(ids_excl, truth_excl), 4),
            **timings(lambda q: index.search(q, K), queries[:timed])}


def build_hnsw(items: np.ndarray, cfg: RetrievalConfig, budget_s: float) -> tuple[ItemIndex | None, float, int]:
    """HNSW added in chunks of 50k; gives up (None) once the build has taken more than `budget_s` seconds."""
    faiss.omp_set_num_threads(cfg.threads)
    index = faiss.IndexHNSWFlat(items.shape[1], cfg.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.ef_construction
    t = time.perf_counter()
    for lo in range(0, len(items), 50_000):
        index.add(items[lo: lo + 50_000])
        if time.perf_counter() - t > budget_s and index.ntotal < len(items):
            return None, time.perf_counter() - t, int(index.ntotal)
    return ItemIndex(index, cfg, "hnsw"), time.perf_counter() - t, int(index.ntotal)


def run_size(n: int, dim: int, n_queries: int, a, write) -> list[dict]:
    items, centres = item_vectors(n, dim, a.seed)
    queries = user_states(centres, n_queries, a.seed + 1)
    slow_timed = min(n_queries, a.timed_exact)  # the full-catalogue methods are timed on fewer queries
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append({"items": n, **row})
        print(json.dumps(rows[-1]), flush=True)
        write(rows)

    # Ground truth from faiss exact; the baseline is the runtime's matmul + prefmine.metrics.top_k.
    t = time.perf_counter()
    exact = ItemIndex.build(items, RetrievalConfig(kind="exact"))
    build_s = time.perf_counter() - t
    truth, _ = exact.search(queries, K)
    rng = np.random.default_rng(a.seed + 2)
    top25, _ = exact.search(queries, 25)
    exclude = [set(row) | set(rng.integers(0, n, N_SEEN - 25).tolist()) for row in top25.tolist()]
    truth_excl, _ = exact.search(queries, K, exclude)
    with blas_one_thread():
        base = np.concatenate([top_k(queries[lo: lo + 64] @ items.T, K) for lo in range(0, len(queries), 64)])
        emit({"method": "numpy matmul+top_k", "param": "runtime baseline", "build_s": 0.0,
              "index_bytes": items.nbytes, "threads": 1,
              "recall@10": round(recall(base, truth), 4),  # vs faiss exact: float rounding and ties only
              **timings(lambda q: top_k(q @ items.T, K), queries[:slow_timed])})
    emit({"method": "exact", "param": "IndexFlatIP", "build_s": round(build_s, 2), "index_bytes": index_bytes(exact),
          "threads": 1, **measure(exact, queries, exclude, truth, truth_excl, slow_timed)})
    del exact

    ivf_cfg = RetrievalConfig(kind="ivf")
    t = time.perf_counter()
    ivf = ItemIndex.build(items, ivf_cfg)
    build_s = time.perf_counter() - t
    size = index_bytes(ivf)
    for v in IVF_NPROBE:
        ivf.configure(RetrievalConfig(**{**asdict(ivf_cfg), "nprobe": v}))
        emit({"method": "ivf", "param": f"nprobe={v}", "build_s": round(build_s, 2), "index_bytes": size,
              "nlist": int(ivf.index.nlist), "threads": 1,
              **measure(ivf, queries, exclude, truth, truth_excl, n_queries)})
    del ivf

    hnsw_cfg = RetrievalConfig(kind="hnsw", m=a.hnsw_m, ef_construction=a.hnsw_ef_construction,
                               threads=a.build_threads)
    hnsw, build_s, added = build_hnsw(items, hnsw_cfg, a.hnsw_budget_s)
    extra = {"m": hnsw_cfg.m, "ef_construction": hnsw_cfg.ef_construction, "build_threads": a.build_threads}
    if hnsw is None:
        emit({"method": "hnsw", "param": None, **extra, "skipped": (
            f"build stopped after {build_s:.0f} s with {added} of {n} items added (budget {a.hnsw_budget_s:.0f} s)")})
        return rows
    size = index_bytes(hnsw)
    for v in HNSW_EF:
        hnsw.configure(RetrievalConfig(**{**asdict(hnsw_cfg), "threads": 1, "ef_search": v}))
        emit({"method": "hnsw", "param": f"ef_search={v}", "build_s": round(build_s, 2), "index_bytes": size,
              **extra, "threads": 1, **measure(hnsw, queries, exclude, truth, truth_excl, n_queries)})
    return rows


def sizes_summary(rows: list[dict]) -> list[dict]:
    """DESIGN.md's headline keys, per size: what `kind="auto"` serves there with the default config (exact below
    `exact_below`, else IVF at the default nprobe), beside the runtime's numpy baseline from the same run."""
    cfg, out = RetrievalConfig(), []
    for n in sorted({r["items"] for r in rows}):
        kind = resolve_kind(cfg, n)
        want = ("exact", "IndexFlatIP") if kind == "exact" else ("ivf", f"nprobe={cfg.nprobe}")
        row = next((r for r in rows if r["items"] == n and (r["method"], r["param"]) == want), None)
        base = next((r for r in rows if r["items"] == n and r["method"].startswith("numpy")), None)
        if row is None:
            continue
        out.append({"items": n, "method": f"{want[0]} {want[1]}", "recall_at_10": row["recall@10"],
                    "recall_at_10_excl": row["recall@10_excl"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                    "batch64_qps": row["batch64_qps"], "baseline_p50_ms": base and base["p50_ms"],
                    "baseline_batch64_qps": base and base["batch64_qps"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "retrieval")
    ap.add_argument("--quick", action="store_true", help="10k and 100k items (a few minutes)")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--timed-exact", type=int, default=256, help="queries timed for numpy and faiss exact")
    ap.add_argument("--build-threads", type=int, default=1, help="faiss threads for the HNSW build only")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-ef-construction", type=int, default=64)
    ap.add_argument("--hnsw-budget-s", type=float, default=480.0, help="give up an HNSW build after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine-note", default=None, help="free text kept with the machine, e.g. shared")
    a = ap.parse_args(argv)
    sizes = a.sizes or ([10_000, 100_000] if a.quick else [100_000, 1_000_000])
    out = Path(a.out) if a.out else default_out("retrieval", a.quick)
    t0 = time.perf_counter()
    settings = {
        "sizes": sizes, "dim": a.dim, "queries": a.queries, "timed_queries_exact": a.timed_exact, "k": K,
        "seen_excluded": N_SEEN, "seed": a.seed,
        "items": "Gaussian mixture, max(64, n/1000) centres, noise 0.5, log-normal(0, 0.3) norms (unnormalised)",
        "queries_like": "Dirichlet blend of 2 centres + noise 0.5", "metric": "inner product",
        "search_threads": 1, "blas_threads": 1, "hnsw_build_threads": a.build_threads,
        "hnsw": {"m": a.hnsw_m, "ef_construction": a.hnsw_ef_construction, "build_budget_s": a.hnsw_budget_s},
        "defaults": asdict(RetrievalConfig()), "latency": "ItemIndex.search per query (batch 1), after warm-up",
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}}
    if a.plan:
        return print_plan("retrieval", source="synthetic item vectors (no input data)", out=out, **settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[dict] = []

    def write(rows: list[dict]) -> None:  # after every row, so a stopped run keeps what it measured
        result = {"bench": "retrieval", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": {**machine(), "cpu_model": cpu_model(), "note": a.machine_note},
                  "faiss": faiss.__version__,
                  "settings": settings, "sizes": sizes_summary(done + rows), "rows": done + rows,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "total_s": round(time.perf_counter() - t0, 1)}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)

    for n in sizes:
        done += run_size(n, a.dim, a.queries, a, write)
    write([])
    print(json.dumps({"total_s": round(time.perf_counter() - t0, 1)}))
    return 0


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or None


if __name__ == "__main__":
    sys.exit(main())
