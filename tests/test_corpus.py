"""Training inputs drawn from a real prepared dataset without Ray: the encoder corpus (prefmine/text/corpus.py),
the simulator's train-period ratings (prefmine/policy/inputs.py) and the blend fitted beside a saved ranker
(prefmine/ranker/blend.py fit_blend)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prefmine.data.dataset import load_dataset
from prefmine.policy.inputs import train_ratings
from prefmine.text.corpus import corpus
from prefmine.train_config import PRESETS


@pytest.fixture(scope="module")
def ds(magazine5):
    return load_dataset(magazine5, with_reviews=True)


def _review_text(rev):
    return [" . ".join(p for p in (s, t) if p) for s, t in zip(rev["summary"], rev["text"])]


def test_corpus_holds_item_texts_and_train_reviews_only_each_once(ds):
    cfg = dataclasses.replace(PRESETS["tiny"].encoder, max_texts=10**6)
    texts, rated, ratings = corpus(ds, cfg)
    assert len(texts) == len(set(texts)) and len(rated) == len(set(rated)) == len(ratings)
    held = ds.reviews[ds.reviews["split"] != "train"]
    only_held = set(_review_text(held)) - set(_review_text(ds.reviews[ds.reviews["split"] == "train"]))
    only_held -= set(ds.items["text"])
    assert only_held, "the dataset has held-out reviews of their own"
    assert not only_held & set(texts) and not only_held & set(rated)
    assert set(ds.items["text"]) - {""} <= set(texts)
    assert ((ratings >= 1) & (ratings <= 5)).all()


def test_corpus_cap_is_a_seeded_sample(ds):
    cfg = dataclasses.replace(PRESETS["tiny"].encoder, max_texts=50)
    a, b = corpus(ds, cfg), corpus(ds, cfg)
    assert len(a[0]) == 50 and len(a[1]) == 50 and a[0] == b[0] and a[1] == b[1]
    other = corpus(ds, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert other[0] != a[0]


def test_train_ratings_leave_every_valid_and_test_item_out(ds):
    items, ratings = train_ratings(ds)
    assert len(items) == len(ratings) > 0 and items.dtype == np.int64
    rev = ds.reviews
    rated = rev[rev["item"].isin(ds.item_index) & rev["rating"].notna()]
    targets = {(ds.users[u], ds.item_ids[i]) for t in (ds.valid_item, ds.test_item) for u, i in enumerate(t)
               if i >= 0}
    n_target_reviews = sum((u, i) in targets for u, i in zip(rated["user"], rated["item"]))
    assert n_target_reviews > 0 and len(items) == len(rated) - n_target_reviews
    no_reviews = dataclasses.replace(ds, reviews=None)
    assert train_ratings(no_reviews) == (None, None)


def test_fit_blend_saves_weights_the_runtime_then_uses(ds, tmp_path):
    from prefmine.ranker.blend import fit_blend
    from prefmine.ranker.model import RankerConfig
    from prefmine.ranker.runtime import RankerRuntime
    from tests.test_runtime_retrieval import write_bundle

    bundle = write_bundle(tmp_path / "b", ds.n_items)
    users = ds.eval_users("valid")
    cfg = RankerConfig(dim=64, layers=1, heads=2, fusion="none", max_len=20)
    out = fit_blend(bundle / "ranker", ds, cfg, None, [ds.history(u, "valid") for u in users],
                    [ds.history_times(u, "valid") for u in users], ds.valid_item[users])
    assert out["gamma"] == 0.0  # no text term is tried for an ID-only ranker
    assert out["valid_NDCG@10"] >= out["valid_NDCG@10_ranker_alone"]  # chosen on validation: never worse there
    assert (bundle / "ranker" / "blend.json").is_file()
    rt = RankerRuntime(bundle)
    assert (rt.blend is not None) == (out["beta"] > 0)  # the runtime blends exactly when a weight was chosen
