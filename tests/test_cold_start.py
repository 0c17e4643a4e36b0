"""Cold-item evaluation: the split holds items out of training entirely, the metrics are right by hand, and a
ranker trained without ever seeing the cold items scores them from their text better than chance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prefmine.cold_start import (
    ColdSplit,
    cold_item_split,
    evaluate_cold,
    random_scores,
    text_similarity_scores,
)
from prefmine.data.dataset import load_dataset
from prefmine.ranker.model import RankerConfig
from prefmine.ranker.task import RankerTask, score_histories


def test_cold_split_holds_the_items_out_of_every_training_input(magazine5):
    ds = load_dataset(magazine5)
    sp = cold_item_split(ds, 0.1, seed=3)
    cold = set(sp.cold_items.tolist())
    assert len(cold) == round(0.1 * ds.n_items) == 16
    assert not cold & set(np.concatenate(sp.train_seqs).tolist())
    assert not cold & set(sp.valid_targets.tolist())
    assert all(not cold & set(h.tolist()) for h in sp.valid_histories + sp.histories)
    assert all(t and t <= cold for t in sp.targets)
    # every interaction with a cold item is a target of its user, every warm one stays in the histories
    for u, h, ht, t in zip(sp.users, sp.histories, sp.history_times, sp.targets):
        full = np.concatenate([ds.train_seqs[u], [x for x in (ds.valid_item[u], ds.test_item[u]) if x >= 0]])
        assert set(full.tolist()) == set(h.tolist()) | t
        assert len(ht) == len(h) and (np.diff(ht) >= 0).all()  # warm history in time order
    assert sum(len(s) for s in sp.train_seqs) < sum(len(s) for s in ds.train_seqs)
    assert cold_item_split(ds, 0.1, seed=3).cold_items.tolist() == sp.cold_items.tolist()  # seeded
    with pytest.raises(ValueError, match="fraction"):
        cold_item_split(ds, 1.5)


def test_cold_metrics_by_hand():
    # 6 items, cold = {3, 4, 5}; two users with known targets; a scorer that prefers item 5 then 4 then 3
    sp = ColdSplit(cold_items=np.array([3, 4, 5]), train_seqs=[], train_events=[], train_times=[],
                   valid_histories=[], valid_times=[], valid_targets=np.zeros(0, dtype=np.int64),
                   users=np.array([0, 1]), histories=[np.array([0]), np.array([1, 2])],
                   history_times=[np.array([0]), np.array([0, 1])], targets=[{5}, {3, 4}])
    fixed = lambda h, t: np.tile(np.array([9.0, 9.0, 9.0, 1.0, 2.0, 3.0]), (len(h), 1))  # noqa: E731
    m = evaluate_cold(sp, {"fixed": fixed}, ks=(1, 2))["models"]["fixed"]
    # warm items (score 9) are never ranked; user 0: item 5 first -> hit at 1; user 1: ranks 5, 4, 3
    assert m["Recall@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["Recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    ndcg2_user1 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["NDCG@2"] == pytest.approx((1.0 + ndcg2_user1) / 2)
    text = np.eye(6)
    text[5] = text[0]  # item 5 reads like item 0
    ts = evaluate_cold(sp, {"text": text_similarity_scores(text)}, ks=(1,))["models"]["text"]
    assert ts["Recall@1"] >= 0.5  # user 0 (history: item 0) gets item 5 first


def test_a_ranker_that_never_saw_the_cold_items_scores_them_from_text(magazine5):
    from prefmine.text.checkpoint import resolve_init
    from prefmine.text.encoder import embed_texts
    from prefmine.text.runtime import load_encoder

    torch.manual_seed(0)
    ds = load_dataset(magazine5)
    tokenizer, bert = load_encoder(resolve_init("minilm").path)
    text = embed_texts(bert, tokenizer, list(ds.items["text"].fillna("")), 96)
    sp = cold_item_split(ds, 0.1, seed=0)
    cfg = RankerConfig(batch_size=16, dropout=0.5, id_dropout=0.3)
    task = RankerTask(cfg, ds.n_items, sp.train_seqs, sp.train_events, text, sp.valid_histories,
                      sp.valid_targets, sp.train_times, sp.valid_times)
    assert not task.warm[sp.cold_items].any()
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    best, state = -1.0, None
    for epoch in range(30):  # a plain loop: the trained model, not the trainer, is under test here
        model.train()
        for batch in task.batches(epoch, 0, 1):
            loss = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = task.evaluate(model)["valid_NDCG@10"]
        if score > best:
            best, state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    model.eval()
    ranker = lambda h, t: score_histories(model, h, cfg.max_len, t)  # noqa: E731
    report = evaluate_cold(sp, {"random": random_scores(ds.n_items), "text_similarity": text_similarity_scores(text),
                                "prefmine": ranker})
    m = report["models"]
    assert report["cold_items"] == 16 and report["users"] > 50
    assert m["prefmine"]["NDCG@10"] > m["random"]["NDCG@10"] + 0.03, m
    # the cold scores come from text: give the cold items other items' texts and their scores change
    before = ranker(sp.histories[:20], sp.history_times[:20])[:, sp.cold_items]
    swapped = text.copy()
    swapped[sp.cold_items] = text[np.roll(sp.cold_items, 1)]
    with torch.no_grad():
        model.text[1:] = torch.from_numpy(swapped)
    after = ranker(sp.histories[:20], sp.history_times[:20])[:, sp.cold_items]
    assert not np.allclose(before, after)
    assert np.allclose(before, np.roll(after, -1, axis=1), atol=1e-4)  # the score follows the text
