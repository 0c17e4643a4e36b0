"""ANN candidate retrieval (prefmine.ranker.retrieval) against a numpy ground truth, with real faiss."""

from __future__ import annotations

import numpy as np
import pytest

from prefmine.ranker.retrieval import ItemIndex, RetrievalConfig

N, DIM, CLUSTERS, K = 2000, 32, 20, 10


def mixture(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-mixture item vectors with log-normal norms (unnormalised, like the ranker's), and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    x *= rng.lognormal(0.0, 0.3, (n, 1))
    return x.astype(np.float32), centres


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    items, centres = mixture(N, DIM, CLUSTERS, seed=0)
    rng = np.random.default_rng(1)
    queries = centres[rng.integers(0, CLUSTERS, 64)] + 0.7 * rng.standard_normal((64, DIM))
    return items, queries.astype(np.float32)


def truth(items: np.ndarray, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    for row, ex in enumerate(exclude or []):
        scores[row, list(ex)] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, 1)


CONFIGS = {
    "exact": RetrievalConfig(kind="exact"),
    "hnsw": RetrievalConfig(kind="hnsw", m=32, ef_search=256),
    "ivf": RetrievalConfig(kind="ivf", nlist=32, nprobe=32),
}


@pytest.fixture(scope="module")
def indexes(data) -> dict[str, ItemIndex]:
    return {name: ItemIndex.build(data[0], cfg) for name, cfg in CONFIGS.items()}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_top_k_equals_exact(indexes, data, kind):
    items, queries = data
    ids, scores = indexes[kind].search(queries, K)
    want_ids, want_scores = truth(items, queries, K)
    assert ids.shape == scores.shape == (len(queries), K) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_exclusion(indexes, data, kind):
    items, queries = data
    full, _ = truth(items, queries, 200)
    rng = np.random.default_rng(2)
    # Exclude each query's own best items (the hard case), some random ones, and nothing for one row.
    exclude = [set(full[i, : 5 + 20 * (i % 4)].tolist()) | set(rng.integers(0, N, 30).tolist())
               for i in range(len(queries))]
    exclude[3] = None
    ids, scores = indexes[kind].search(queries, K, exclude)
    for row, ex in enumerate(exclude):
        assert not set(ids[row].tolist()) & (ex or set())
    assert (ids >= 0).all() and np.isfinite(scores).all()
    want_ids, want_scores = truth(items, queries, K, [e or set() for e in exclude])
    if kind == "hnsw":
        # Excluding a user's best items asks the graph for ranks up to k + |exclude| (~100 here), which it finds
        # less reliably than the top 10: approximate, so a recall bound, and each score is the true score.
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids.tolist(), want_ids.tolist())])
        assert recall >= 0.9, recall
        true = queries.astype(np.float64) @ items.T.astype(np.float64)
        np.testing.assert_allclose(scores, np.take_along_axis(true, ids, 1), rtol=1e-5, atol=1e-4)
        assert (np.diff(scores, axis=1) <= 0).all()
        return
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_save_load_round_trip(indexes, data, kind, tmp_path):
    queries = data[1]
    exclude = [{i, i + 1} for i in range(len(queries))]
    index = indexes[kind]
    index.save(tmp_path / kind)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["index.faiss", "index.json"]
    loaded = ItemIndex.load(tmp_path / kind)
    assert (loaded.kind, loaded.n, loaded.dim, loaded.cfg) == (kind, N, DIM, index.cfg)
    for ex in (None, exclude):
        a, b = index.search(queries, K, ex), loaded.search(queries, K, ex)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_k_beyond_catalogue_pads(kind):
    items, centres = mixture(50, 8, 3, seed=3)
    cfg = {"ivf": RetrievalConfig(kind="ivf", nlist=1), "hnsw": RetrievalConfig(kind="hnsw", m=8)}
    index = ItemIndex.build(items, cfg.get(kind, RetrievalConfig(kind=kind)))
    queries = centres.astype(np.float32)
    ids, scores = index.search(queries, 60, exclude=[{0, 1, 2}, None, set(range(50))])
    assert ids.shape == scores.shape == (3, 60)
    want, _ = truth(items, queries, 50, [{0, 1, 2}, set(), set()])
    np.testing.assert_array_equal(ids[0, :47], want[0, :47])
    np.testing.assert_array_equal(ids[1, :50], want[1])
    assert (ids[0, 47:] == -1).all() and np.isneginf(scores[0, 47:]).all()
    assert (ids[1, 50:] == -1).all() and np.isneginf(scores[1, 50:]).all()
    assert (ids[2] == -1).all() and np.isneginf(scores[2]).all()


def test_auto_kind_is_exact_for_a_small_catalogue(data):
    assert ItemIndex.build(data[0][:100]).kind == "exact"


@pytest.mark.parametrize("field,value", [("kind", "annoy"), ("m", 1), ("ef_construction", 0), ("ef_search", -1),
                                         ("nlist", -1), ("nprobe", 0), ("seed", -5), ("threads", 0),
                                         ("m", 2.5), ("nprobe", True)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RetrievalConfig(**{field: value})


def test_bad_inputs(indexes, data):
    items, queries = data
    with pytest.raises(ValueError, match="nlist"):
        ItemIndex.build(items[:10], RetrievalConfig(kind="ivf", nlist=11))
    with pytest.raises(ValueError, match="dimension"):
        indexes["exact"].search(queries[:, :8], K)
    with pytest.raises(ValueError, match="k must"):
        indexes["exact"].search(queries, 0)
    with pytest.raises(ValueError, match="exclude"):
        indexes["exact"].search(queries, K, exclude=[set()])
