"""ANN candidate retrieval (prefmine.ranker.retrieval) against a numpy ground truth, with real faiss."""

from __future__ import annotations

import json

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
    assert loaded.matches(data[0]) and not loaded.matches(data[0] + 1.0) and not loaded.matches(data[0][:-1])
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


def test_auto_kind_is_exact_below_the_threshold(data):
    assert ItemIndex.build(data[0][:100]).kind == "exact"
    assert ItemIndex.build(data[0][:100], RetrievalConfig(exact_below=100, nlist=2)).kind == "ivf"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_nearly_everything_excluded_still_gives_k(indexes, data, kind):
    """Exclude all but 13 items per query: every kind must return the best 10 of those 13, nothing excluded."""
    items, queries = data
    rng = np.random.default_rng(4)
    allowed = [rng.choice(N, 13, replace=False) for _ in range(8)]
    exclude = [set(range(N)) - set(a.tolist()) for a in allowed]
    ids, scores = indexes[kind].search(queries[:8], K, exclude)
    want, want_scores = truth(items, queries[:8], K, exclude)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)


def test_ivf_probing_too_few_items_falls_back_to_exhaustive(data):
    """nprobe=1 scans one list (~60 items); excluding each query's best 150 leaves most probed lists with fewer
    than 10 other items: those rows are searched again over all lists (the exact answer), the others keep the
    approximate one, and no row comes back short or with an excluded item."""
    items, queries = data
    index = ItemIndex.build(items, RetrievalConfig(kind="ivf", nlist=32, nprobe=1))
    full, _ = truth(items, queries, 150)
    exclude = [set(row) for row in full.tolist()]
    raw, _ = index._raw_search(queries, 160)  # what one probed list holds (-1 padded), before the fallback
    was_short = np.array([len(set(r.tolist()) - ex - {-1}) < K for r, ex in zip(raw, exclude)])
    assert was_short.mean() > 0.5
    ids, scores = index.search(queries, K, exclude)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert not any(set(r.tolist()) & ex for r, ex in zip(ids, exclude))
    want, want_scores = truth(items, queries, K, exclude)
    np.testing.assert_array_equal(ids[was_short], want[was_short])
    np.testing.assert_allclose(scores[was_short], want_scores[was_short], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_ties_come_back_lower_id_first(kind):
    rng = np.random.default_rng(5)
    items = (0.1 * rng.standard_normal((300, 8))).astype(np.float32)
    top = np.array([250, 7, 120, 3, 77])
    items[top] = 1.0  # five identical best items, far above the rest
    cfg = {"ivf": RetrievalConfig(kind="ivf", nlist=4, nprobe=4), "hnsw": RetrievalConfig(kind="hnsw", m=8)}
    index = ItemIndex.build(items, cfg.get(kind, RetrievalConfig(kind=kind)))
    ids, scores = index.search(np.ones((2, 8), dtype=np.float32), 5, exclude=[None, {3}])
    np.testing.assert_array_equal(ids[0], np.sort(top))
    np.testing.assert_array_equal(index.search(np.ones((1, 8), dtype=np.float32), 5)[0][0], np.sort(top))
    assert ids[1, :4].tolist() == [7, 77, 120, 250] and ids[1, 4] not in top


def test_search_keeps_the_configured_threads(indexes, data):
    import faiss

    index = ItemIndex.build(data[0], RetrievalConfig(kind="ivf", nlist=16, threads=2))
    faiss.omp_set_num_threads(1)
    index.search(data[1], K)
    assert faiss.omp_get_max_threads() == 2
    indexes["exact"].search(data[1], K)
    assert faiss.omp_get_max_threads() == 1


def test_load_errors_name_the_problem(indexes, tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        ItemIndex.load(tmp_path / "nothing")
    indexes["ivf"].save(tmp_path / "a")
    indexes["hnsw"].save(tmp_path / "b")
    (tmp_path / "a" / "index.faiss").replace(tmp_path / "b" / "index.faiss")  # json says hnsw, file is IVF
    with pytest.raises(ValueError, match="interrupted"):
        ItemIndex.load(tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "index.json").read_text())
    meta["config"]["efsearch"] = 3
    indexes["ivf"].save(tmp_path / "a")
    (tmp_path / "a" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="efsearch"):
        ItemIndex.load(tmp_path / "a")


def test_load_with_a_search_config(indexes, data, tmp_path):
    indexes["ivf"].save(tmp_path, name="item_index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item_index.faiss", "item_index.json"]
    loaded = ItemIndex.load(tmp_path, name="item_index", cfg=RetrievalConfig(kind="ivf", nprobe=1))
    assert loaded.cfg.nprobe == 1
    assert (loaded.search(data[1], K)[0] != indexes["ivf"].search(data[1], K)[0]).any()  # 1 of 32 lists: misses


@pytest.mark.parametrize("field,value", [("kind", "annoy"), ("exact_below", -1), ("m", 1), ("ef_construction", 0), ("ef_search", -1),
                                         ("nlist", -1), ("nprobe", 0), ("seed", -5), ("threads", 0),
                                         ("m", 2.5), ("nprobe", True)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RetrievalConfig(**{field: value})


def test_config_from_a_dict_names_unknown_fields_unless_told_to_leave_them_out():
    with pytest.raises(ValueError, match=r"unknown retrieval field\(s\) \['efsearch'\]"):
        RetrievalConfig.from_dict({"kind": "hnsw", "efsearch": 5})
    # a bundle's recorded config (update_policy): a field this version does not know is left out, the rest kept
    got = RetrievalConfig.from_dict({"kind": "hnsw", "ef_search": 7, "from_a_later_version": 1}, ignore_unknown=True)
    assert got == RetrievalConfig(kind="hnsw", ef_search=7)
    with pytest.raises(ValueError, match="ef_search"):  # known fields are still checked
        RetrievalConfig.from_dict({"ef_search": 0}, ignore_unknown=True)


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
