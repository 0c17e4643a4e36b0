"""The fused ranker model: padding trimming is exact, the ID-only variant ignores text, windows cover targets."""

from __future__ import annotations

import numpy as np
import torch

from prefmine.ranker.model import FusedRanker, RankerConfig, pad_left
from prefmine.ranker.task import make_windows


def test_trimmed_batches_give_the_same_states_as_full_width():
    torch.manual_seed(0)
    cfg = RankerConfig(max_len=12, dim=16, heads=2, layers=2, dropout=0.0)
    model = FusedRanker(cfg, n_items=30, text_emb=np.random.default_rng(0).normal(size=(30, 8))).eval()
    seqs = [np.array([3, 5, 7]), np.array([1, 2]), np.array([9])]
    items = torch.from_numpy(pad_left(seqs, cfg.max_len))
    events = (items > 0).long() * 5
    full = model.hidden(items, events)[:, -1]
    trimmed = model.user_states(items, events)
    assert torch.allclose(full, trimmed, atol=1e-5)
    assert torch.isfinite(model.hidden(items, events)).all()


def test_id_only_variant_has_no_text_path():
    cfg = RankerConfig(max_len=8, dim=16, heads=2, layers=1, fusion="none")
    model = FusedRanker(cfg, n_items=10, text_emb=np.ones((10, 4)))
    assert not model.use_text and not hasattr(model, "text_proj")
    assert FusedRanker(RankerConfig(max_len=8, dim=16, heads=2, layers=1), 10, np.ones((10, 4))).use_text


def test_windows_predict_every_next_item_once():
    seqs = [np.arange(7), np.array([4]), np.array([2, 3])]
    events = [np.full(len(s), 4) for s in seqs]
    x, e, y = make_windows(seqs, events, max_len=3)
    # user 0: 6 targets (items 1..6) over windows of at most 3 targets; user 1: none; user 2: one target
    targets = sorted(int(t) - 1 for t in y[y > 0])
    assert targets == [1, 2, 3, 3, 4, 5, 6]
    assert (x[y > 0] > 0).all() and (e[x > 0] == 5).all()
