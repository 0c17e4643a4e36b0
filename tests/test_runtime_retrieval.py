"""RankerRuntime top-N through prefmine.ranker.retrieval, on a synthetic saved ranker bundle (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prefmine import config as C
from prefmine.metrics import top_k
from prefmine.ranker import retrieval
from prefmine.ranker.model import FusedRanker, RankerConfig
from prefmine.ranker.retrieval import RetrievalConfig, save_retrieval_index
from prefmine.ranker.runtime import RankerRuntime

K = 10


def write_bundle(path, n_items: int, seed: int = 0):
    """A ranker bundle as cluster/train_ranker.py `_train_one` lays it out (untrained weights), plus popularity."""
    torch.manual_seed(seed)
    cfg = RankerConfig(dim=64, layers=1, heads=2, fusion="none", max_len=20)
    model = FusedRanker(cfg, n_items)
    with torch.no_grad():  # clustered item embeddings, as training leaves them (random ones have no structure)
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((40, cfg.dim))
        x = centres[rng.integers(0, 40, n_items)] + 0.5 * rng.standard_normal((n_items, cfg.dim))
        model.item_emb.weight[1:] = torch.as_tensor(x * rng.lognormal(0, 0.3, (n_items, 1)), dtype=torch.float32)
    out = path / "ranker"
    out.mkdir(parents=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "ranker_config.json").write_text(json.dumps({"config": C.to_dict(cfg), "n_items": n_items}, indent=2))
    (path / "catalog").mkdir()
    np.save(path / "catalog" / "popularity.npy", np.random.default_rng(seed).zipf(1.5, n_items).astype(np.float64))
    return path


def requests(n_items: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    histories = [rng.integers(0, n_items, rng.integers(1, 30)) for _ in range(24)]
    histories[5] = np.zeros(0, dtype=np.int64)  # cold start
    exclude = [set(h.tolist()) | set(rng.integers(0, n_items, 20).tolist()) for h in histories]
    exclude[7] = None
    return histories, exclude


def matmul_top_k(rt: RankerRuntime, histories, n, exclude):
    """The runtime's path before retrieval was wired in."""
    scores = rt.user_states(histories) @ rt.item_vectors.T
    for i, h in enumerate(histories):
        if len(h) == 0:
            scores[i] = np.log1p(rt.popularity)
    idx = top_k(scores, n, exclude)
    return idx, np.take_along_axis(scores, idx, 1)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("small"), 2000)


@pytest.fixture(scope="module")
def bundle_5k(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("b5k"), 5000, seed=3)


def test_exact_below_the_threshold_is_the_matmul_bit_for_bit(small_bundle):
    assert save_retrieval_index(small_bundle / "ranker")["kind"] == "exact"
    assert not list((small_bundle / "ranker").glob("item_index.*"))  # nothing to save for an exact catalogue
    rt = RankerRuntime(small_bundle)
    assert rt.index is None
    histories, exclude = requests(2000)
    for n in (K, 100):
        idx, scores, states = rt.top_n_with_states(histories, n, exclude)
        want_idx, want_scores = matmul_top_k(rt, histories, n, exclude)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(scores, want_scores)
        assert scores.dtype == want_scores.dtype
        np.testing.assert_array_equal(states, rt.user_states(histories))
    np.testing.assert_array_equal(rt.scores(histories), rt.user_states(histories) @ rt.item_vectors.T)


@pytest.mark.parametrize("cfg", [
    RetrievalConfig(exact_below=1000, nprobe=64),  # auto: IVF, 64 of its 283 lists
    RetrievalConfig(kind="hnsw", ef_search=512),  # MIPS graphs lose more at ranks past 10 (exclusion)
], ids=["ivf", "hnsw"])
def test_approximate_path_finds_the_exact_top_10(bundle_5k, cfg, monkeypatch):
    ranker = bundle_5k / "ranker"
    info = save_retrieval_index(ranker, cfg)
    assert info["kind"] == ("ivf" if cfg.kind == "auto" else cfg.kind)
    assert sorted(p.name for p in ranker.glob("item_index.*")) == ["item_index.faiss", "item_index.json"]

    def no_build(*a, **k):
        raise AssertionError("the saved index should have been loaded, not rebuilt")

    monkeypatch.setattr(retrieval.ItemIndex, "build", no_build)
    rt = RankerRuntime(bundle_5k)  # config as saved with the index
    assert rt.index is not None and rt.index.kind == info["kind"] and rt.index.n == 5000
    monkeypatch.undo()
    histories, exclude = requests(5000)
    idx, scores, states = rt.top_n_with_states(histories, K, exclude)
    want_idx, want_scores = matmul_top_k(rt, histories, K, exclude)
    assert idx.shape == scores.shape == (len(histories), K)
    for row, ex in enumerate(exclude):
        assert not set(idx[row].tolist()) & (ex or set())
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # cold start (row 5): the popularity ranking, as before
    np.testing.assert_array_equal(idx[5], want_idx[5])


def test_bundle_without_an_index_builds_one_at_load(bundle_5k, caplog):
    for p in (bundle_5k / "ranker").glob("item_index.*"):
        p.unlink()
    with caplog.at_level("WARNING"):
        rt = RankerRuntime(bundle_5k, retrieval=RetrievalConfig(exact_below=1000, nprobe=283))
    assert rt.index is not None and rt.index.kind == "ivf" and "building" in caplog.text
    histories, exclude = requests(5000, seed=2)
    np.testing.assert_array_equal(rt.top_n(histories, K, exclude)[0], matmul_top_k(rt, histories, K, exclude)[0])


def test_a_stale_index_is_rebuilt(tmp_path, bundle_5k, caplog):
    # an index saved for other item vectors (another model) beside this model is not used
    other = write_bundle(tmp_path / "other", 5000, seed=9)
    save_retrieval_index(other / "ranker", RetrievalConfig(exact_below=1000))
    stale = tmp_path / "stale"
    stale.mkdir()
    for p in (bundle_5k / "ranker").glob("*"):
        (stale / p.name).write_bytes(p.read_bytes())
    for p in (other / "ranker").glob("item_index.*"):
        (stale / p.name).write_bytes(p.read_bytes())
    (tmp_path / "stale_bundle").mkdir()
    (stale).rename(tmp_path / "stale_bundle" / "ranker")
    with caplog.at_level("WARNING"):
        rt = RankerRuntime(tmp_path / "stale_bundle")
    assert "does not match" in caplog.text and rt.index.matches(rt.item_vectors)


def test_more_candidates_than_items_left_pads(bundle_5k):
    rt = RankerRuntime(bundle_5k, retrieval=RetrievalConfig(exact_below=1000))
    everything_but_3 = set(range(5000)) - {10, 20, 30}
    idx, scores = rt.top_n([np.array([1, 2]), np.zeros(0, dtype=np.int64)], 5, [everything_but_3] * 2)
    for row in range(2):
        assert sorted(idx[row, :3].tolist()) == [10, 20, 30] and np.isfinite(scores[row, :3]).all()
        assert (idx[row, 3:] == -1).all() and np.isneginf(scores[row, 3:]).all()


def test_appended_items_are_merged_beside_the_approximate_index(bundle_5k):
    """RankerRuntime.extended over a catalogue served through an approximate index: items appended after training
    (new catalogue items) are scored exactly beside the index, not by rebuilding it, and the merged top 10 is the
    exact top 10 of the extended catalogue, exclusions of new items honoured."""
    save_retrieval_index(bundle_5k / "ranker", RetrievalConfig(kind="hnsw", ef_search=512))
    rt = RankerRuntime(bundle_5k)
    assert rt.index is not None
    histories, exclude = requests(5000)
    top = rt.top_n_with_states(histories, 1, exclude)[0][:, 0]
    new = 1.5 * rt.item_vectors[top[[0, 1, 2, 3]]]  # copies of some users' best items, scored higher still
    ext = rt.extended(new)
    assert ext.index.index is rt.index and len(ext.item_vectors) == 5004
    exclude[1] = (exclude[1] or set()) | {5001}  # a new item excluded for user 1
    idx, scores, _ = ext.top_n_with_states(histories, K, exclude)
    want_idx, want_scores = matmul_top_k(ext, histories, K, exclude)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert idx[0, 0] == 5000 and 5001 not in idx[1] and (idx >= 5000).any(axis=1).sum() >= 3
