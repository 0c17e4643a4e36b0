"""The contrastive objective (user text history vs next item text) and Ray Data batch-inference embeddings,
on the real Magazine 5-core data, through Ray Train + DeepSpeed on 2 CPU workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from prefmine.text.user_text import SEPARATOR, HistoryWriter, contrastive_pairs, user_histories


@pytest.fixture(scope="module")
def dataset(magazine5):
    from prefmine.data.dataset import load_dataset

    return load_dataset(magazine5, with_reviews=True)


def test_histories_read_only_the_past_and_train_period_reviews(dataset):
    writer = HistoryWriter(dataset, n_items=3, words_per_item=1000)
    rev = dataset.reviews
    def texts(frame):
        return {f"{s} . {t}" for s, t in zip(frame["summary"], frame["text"]) if s and t}

    held_text = texts(rev[rev["split"] != "train"]) - texts(rev[rev["split"] == "train"])  # minus shared phrasings
    assert len(held_text) > 100 and not held_text & set(writer.reviews.values())
    queries, targets, items = contrastive_pairs(dataset, writer, pairs_per_user=2, max_pairs=10**9, seed=0)
    assert len(queries) == len(targets) == len(items) > 300
    u = next(u for u, s in enumerate(dataset.train_seqs) if len(s) >= 5)
    seq = dataset.train_seqs[u]
    hist = writer.history(u, seq[:4])
    parts = hist.split(SEPARATOR)
    assert len(parts) == 3  # the 3 most recent items, newest first
    own = writer.reviews.get((str(dataset.users[u]), int(seq[3])))
    assert parts[0] == (own or writer.item_text(int(seq[3])))
    # the whole-sequence history (the user's text vector input) never reads the held-out items
    full = user_histories(dataset, writer)[u]
    for item in (dataset.valid_item[u], dataset.test_item[u]):
        if item >= 0 and item not in seq:
            assert writer.item_text(int(item)) not in full


def test_text_matcher_masks_duplicate_items_as_negatives():
    from transformers import BertConfig, BertModel

    from prefmine.text.encoder import TextMatcher

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False)
    m = TextMatcher(bert, temperature=0.1)
    q = torch.randint(5, 50, (4, 8))
    d = torch.randint(5, 50, (4, 8))
    d[1] = d[0]  # the same item twice in the batch
    ones = torch.ones_like(q)
    distinct = m(q, ones, d, ones, torch.tensor([0, 1, 2, 3]))
    same = m(q, ones, d, ones, torch.tensor([7, 7, 2, 3]))
    assert torch.isfinite(same) and same < distinct  # the duplicate is no longer pushed away


@pytest.mark.slow
def test_contrastive_fine_tuning_learns_next_item_text(dataset, ray_session, tmp_path, tiny_bert_dir):
    from cluster.ds_train import DistConfig
    from cluster.train_encoder import train_encoder
    from prefmine.text.encoder import EncoderConfig

    d = tiny_bert_dir(tmp_path / "ckpt", list(dataset.items["text"]))
    cfg = EncoderConfig(init=str(d), mlm_epochs=0, finetune_epochs=0, contrastive_epochs=8, finetune_lr=5e-3,
                        pairs_per_user=4, batch_size=32, temperature=0.1)
    m = train_encoder(dataset, tmp_path / "bundle", cfg, DistConfig())
    hist = m["contrastive_history"]
    assert m["contrastive_pairs"] > 500
    assert hist[-1]["loss"] < hist[0]["loss"]
    last = hist[-1]
    assert last["heldout_recall@10"] > 1.4 * last["heldout_random_recall@10"], hist
    assert last["heldout_mrr"] > hist[0]["heldout_mrr"], hist
    enc = tmp_path / "bundle" / "encoder"
    users = np.load(enc / "user_text_embeddings.npy")
    assert users.shape == (dataset.n_users, 32)
    assert np.allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-4)
    # a user's text vector sits nearer their own next (valid) item than a random item, on average
    items = np.load(enc / "item_embeddings.npy")
    eval_users = dataset.eval_users("valid")
    own = (users[eval_users] * items[dataset.valid_item[eval_users]]).sum(1)
    rand = users[eval_users] @ items.mean(0)
    assert own.mean() > rand.mean()


@pytest.mark.slow
def test_ray_data_batch_inference_matches_in_process_embeddings(dataset, ray_session, tmp_path, tiny_bert_dir):
    from cluster.embed_job import EmbedConfig, embed_on_ray
    from prefmine.text.encoder import embed_texts
    from prefmine.text.runtime import load_encoder

    texts = list(dataset.items["text"]) + ["", "a text that appears nowhere else"]
    d = tiny_bert_dir(tmp_path / "ckpt", texts)
    out = embed_on_ray(d, texts, tmp_path / "emb.npy", 48, EmbedConfig(batch_size=16, rows_per_block=40))
    tokenizer, bert = load_encoder(d)
    expected = embed_texts(bert, tokenizer, texts, 48)
    assert out.shape == expected.shape == (len(texts), 32)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)  # every row in input order
    assert not list(tmp_path.glob("*.tmp-*"))
    empty = embed_on_ray(d, [], tmp_path / "none.npy", 48)
    assert empty.shape == (0, 32)
    assert pd.Series(texts).duplicated().sum() < len(texts)
