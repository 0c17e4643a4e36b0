"""The ranker's score blend (prefmine/ranker/blend.py): similarity by hand, the weights chosen on validation,
candidate subsets blended exactly as full rows, and a saved blend used by RankerRuntime."""

from __future__ import annotations

import numpy as np
import pytest

from prefmine.metrics import top_k
from prefmine.ranker.blend import (
    BlendConfig,
    ScoreBlend,
    choose_weights,
    combine,
    cooc_scores,
    item_similarity,
    save_blend,
    text_profiles,
    unit_rows,
)
from prefmine.ranker.retrieval import RetrievalConfig
from prefmine.ranker.runtime import RankerRuntime
from tests.test_runtime_retrieval import requests, write_bundle


def test_item_similarity_by_hand():
    # users: {0,1}, {0,1,2} (item 2 twice), {2,3}; counts 2,2,2,1
    seqs = [np.array([0, 1]), np.array([0, 1, 2, 2]), np.array([2, 3])]
    full = item_similarity(4, seqs, neighbours=4).toarray()
    expect = np.array([[0, 1.0, 0.5, 0],
                       [1.0, 0, 0.5, 0],
                       [0.5, 0.5, 0, 1 / np.sqrt(2)],
                       [0, 0, 1 / np.sqrt(2), 0]], dtype=np.float32)
    np.testing.assert_allclose(full, expect, rtol=1e-6)
    cut = item_similarity(4, seqs, neighbours=1).toarray()  # each row keeps its largest (ties kept)
    np.testing.assert_allclose(cut[0], [0, 1.0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(cut[2], [0, 0, 0, 1 / np.sqrt(2)], rtol=1e-6)
    # a history's score is the sum of its distinct items' rows
    np.testing.assert_allclose(cooc_scores(item_similarity(4, seqs, 4), [np.array([0, 0, 2])])[0],
                               expect[0] + expect[2], rtol=1e-6)


def _chain(n_items: int, users: int, rng):
    """Histories whose next item is always (last + 1) % n: co-occurrence of neighbours knows it."""
    starts = rng.integers(0, n_items, users)
    hist = [np.array([(s + j) % n_items for j in range(3)]) for s in starts]
    targets = np.array([(h[-1] + 1) % n_items for h in hist])
    train = [np.array([i, (i + 1) % n_items]) for i in range(n_items)]
    return hist, targets, item_similarity(n_items, train, 2)


def test_weights_are_chosen_on_validation_only_for_terms_that_help():
    rng = np.random.default_rng(0)
    n = 60
    hist, targets, sim = _chain(n, 200, rng)
    vecs = rng.standard_normal((n, 8))
    noise_states = rng.standard_normal((200, 8))  # a ranker that knows nothing; co-occurrence knows the answer
    (beta, gamma), table = choose_weights(noise_states, vecs, sim, hist, targets, BlendConfig(), chunk=64)
    assert beta > 0 and gamma == 0.0 and table[(beta, 0.0)] > table[(0.0, 0.0)] + 0.3
    assert {g for _, g in table} == {0.0}  # no text vectors: the text weight is not tried
    onehot = np.eye(n)  # a ranker that knows the answer: the other terms can only tie or blur it
    noisy_sim = item_similarity(n, [rng.integers(0, n, 5) for _ in range(300)], 10)
    (beta, gamma), table = choose_weights(onehot[targets], onehot, noisy_sim, hist, targets, BlendConfig(),
                                          unit_rows(rng.standard_normal((n, 16))))
    assert (beta, gamma) == (0.0, 0.0) and table[(0.0, 0.0)] == pytest.approx(1.0) and min(table.values()) < 1.0
    # text vectors that put each item next to its successor (and predecessor): the text weight is chosen
    angle = np.arange(n) * 2 * np.pi / n
    ring = np.stack([np.cos(angle), np.sin(angle)], 1)
    (beta, gamma), table = choose_weights(noise_states, vecs, noisy_sim, [h[-1:] for h in hist], targets,
                                          BlendConfig(), ring)
    assert gamma > 0 and table[(beta, gamma)] > table[(0.0, 0.0)] + 0.1


def test_candidate_subsets_are_blended_as_full_rows():
    rng = np.random.default_rng(1)
    n = 500
    sim = item_similarity(n, [rng.integers(0, n, rng.integers(2, 12)) for _ in range(400)], 50)
    vecs, states = rng.standard_normal((n, 16)), rng.standard_normal((30, 16))
    text = unit_rows(rng.standard_normal((n, 24)))
    hist = [rng.integers(0, n, rng.integers(1, 10)) for _ in range(30)]
    b = ScoreBlend(sim, 0.7, vecs, text, 0.4)
    full = b.full(states @ vecs.T, hist)
    want_full = combine(states @ vecs.T, cooc_scores(sim, hist), text_profiles(text, hist) @ text.T, 0.7, 0.4)
    np.testing.assert_allclose(full, want_full, rtol=1e-5)
    cands = rng.integers(0, n, (30, 40))
    cands[:, -3:] = -1  # padding stays out
    got = b.rescore(states, np.take_along_axis(states @ vecs.T, np.maximum(cands, 0), 1), cands, hist)
    want = np.take_along_axis(full, np.maximum(cands, 0), 1)
    np.testing.assert_allclose(got[:, :-3], want[:, :-3], rtol=1e-4, atol=1e-4)
    assert np.isneginf(got[:, -3:]).all()


@pytest.fixture(scope="module")
def blended_bundle(tmp_path_factory):
    path = write_bundle(tmp_path_factory.mktemp("blend"), 3000, seed=5)
    rng = np.random.default_rng(5)
    sim = item_similarity(3000, [rng.integers(0, 3000, rng.integers(2, 20)) for _ in range(4000)], 100)
    save_blend(path / "ranker", sim, (0.5, 0.0), {(0.0, 0.0): 0.1, (0.5, 0.0): 0.2}, BlendConfig())
    return path


def test_runtime_scores_and_candidates_use_the_saved_blend(blended_bundle):
    histories, exclude = requests(3000)
    plain = RankerRuntime(blended_bundle, blend=False, retrieval=RetrievalConfig(exact_below=10**6))
    rt = RankerRuntime(blended_bundle, retrieval=RetrievalConfig(exact_below=10**6))
    assert rt.blend is not None and plain.blend is None
    raw = plain.scores(histories)
    np.testing.assert_allclose(rt.scores(histories), rt.blend.full(raw, histories), rtol=1e-5)
    idx, _ = rt.top_n(histories, 10, exclude)
    want = top_k(rt.scores(histories), 10, exclude)
    warm = [i for i, h in enumerate(histories) if len(h)]
    np.testing.assert_array_equal(idx[warm], want[warm])
    # the approximate path retrieves by ranker score (2x oversampled) and blends the candidates exactly
    ivf = RankerRuntime(blended_bundle, retrieval=RetrievalConfig(exact_below=1000, nprobe=10**4))
    aidx, ascores = ivf.top_n(histories, 10, exclude)
    assert all(np.all(np.diff(ascores[i]) <= 1e-6) for i in warm)
    overlap = np.mean([len(set(aidx[i]) & set(want[i])) / 10 for i in warm])
    assert overlap >= 0.8, overlap
