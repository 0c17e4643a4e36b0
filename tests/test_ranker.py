"""The fused ranker model: padding trimming is exact, the ID-only variant ignores text, windows cover targets,
time gaps are bucketed and change the state, cold items are scored from text alone and stay out of the softmax,
the sampled softmax trains."""

from __future__ import annotations

import numpy as np
import torch

from prefmine.ranker.model import GAP_UNKNOWN, FusedRanker, RankerConfig, gap_buckets, pad_left
from prefmine.ranker.task import make_windows, warm_items


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
    x, e, g, y = make_windows(seqs, events, max_len=3)
    # user 0: 6 targets (items 1..6) over windows of at most 3 targets; user 1: none; user 2: one target
    targets = sorted(int(t) - 1 for t in y[y > 0])
    assert targets == [1, 2, 3, 3, 4, 5, 6]
    assert (x[y > 0] > 0).all() and (e[x > 0] == 5).all()
    assert (g[x > 0] == GAP_UNKNOWN).all() and (g[x == 0] == 0).all()  # no times given: every gap unknown


def test_gap_buckets_by_hand():
    minute, hour, day = 60, 3600, 86400
    b = gap_buckets(np.array([0, 0, minute, minute + hour, minute + hour + 400 * day]))
    # first: unknown; 0 min -> log2(1) = 0 -> bucket 2; 1 min -> log2(2) = 1 -> 3; 60 min -> log2(61) = 5.9 -> 7;
    # 400 days = 576000 min -> log2 = 19.1 -> 21
    assert b.tolist() == [GAP_UNKNOWN, 2, 3, 7, 21]
    assert gap_buckets(np.array([0, 10**12])).tolist() == [GAP_UNKNOWN, 23]  # open-ended last bucket
    times = [np.array([0, 60, 120, 10**6])]
    _, _, g, _ = make_windows([np.array([1, 2, 3, 4])], [np.full(4, 4)], max_len=5, times=times)
    assert g[0, -3:].tolist() == [GAP_UNKNOWN, 3, 3]


def test_time_gaps_change_the_state_and_unknown_is_the_default():
    torch.manual_seed(0)
    cfg = RankerConfig(max_len=6, dim=16, heads=2, layers=1, dropout=0.0, fusion="none")
    model = FusedRanker(cfg, n_items=10).eval()
    items = torch.tensor([[0, 0, 3, 4, 5, 6]])
    events = (items > 0).long() * 5
    unknown = (items > 0).long() * GAP_UNKNOWN
    close = torch.tensor([[0, 0, 1, 2, 2, 2]])
    far = torch.tensor([[0, 0, 1, 20, 20, 20]])
    assert torch.allclose(model.user_states(items, events), model.user_states(items, events, unknown))
    assert not torch.allclose(model.user_states(items, events, close), model.user_states(items, events, far))


def test_cold_items_come_from_text_and_stay_out_of_the_softmax():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seqs = [np.array([0, 1, 2, 3]), np.array([2, 3, 4])]
    warm = warm_items(8, seqs)
    assert warm.tolist() == [True] * 5 + [False] * 3
    text = rng.normal(size=(8, 6))
    for fusion in ("gate", "concat"):
        cfg = RankerConfig(max_len=5, dim=16, heads=2, layers=1, dropout=0.0, fusion=fusion)
        model = FusedRanker(cfg, 8, text, warm)
        with torch.no_grad():
            model.item_emb.weight.normal_()
        vecs = model.item_vectors().detach()
        # a cold item's vector is what its text alone gives: changing its ID embedding changes nothing
        with torch.no_grad():
            model.item_emb.weight[6:] += 5.0  # model index = item + 1: items 5, 6, 7 (cold)
            model.item_emb.weight[1] += 5.0  # item 0 (warm)
        after = model.item_vectors().detach()
        assert torch.allclose(vecs[5:], after[5:]) and not torch.allclose(vecs[0], after[0])
        assert not torch.allclose(vecs[5], vecs[6])  # distinct texts, distinct vectors
        items = torch.tensor([[0, 1, 2, 3, 4]])
        loss = model(items, (items > 0).long() * 5, torch.tensor([[0, 2, 3, 4, 5]]))
        loss.backward()
        assert model.item_emb.weight.grad[6:].abs().sum() == 0  # cold IDs get no gradient at all
        assert torch.isfinite(loss)


def test_sampled_softmax_trains_toward_the_next_item():
    torch.manual_seed(0)
    n = 300
    seqs = [np.arange(s, s + 12) % n for s in range(0, n, 3)]  # item i is always followed by item i + 1
    x, e, g, y = make_windows(seqs, [np.full(12, 4)] * len(seqs), max_len=8)
    cfg = RankerConfig(max_len=8, dim=32, heads=2, layers=1, dropout=0.0, fusion="none", softmax="sampled",
                       negatives=32, history_pool=False)
    model = FusedRanker(cfg, n)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    batch = [torch.from_numpy(a) for a in (x, e, y, g)]
    first = None
    for _ in range(150):
        loss = model(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    model.eval()
    states = model.user_states(batch[0], batch[1], batch[3])
    top1 = (states @ model.item_vectors().detach().T).argmax(1) + 1  # model index of the best item
    expected = torch.from_numpy(y[:, -1])
    assert float(loss) < 0.5 * first
    assert (top1 == expected).float().mean() > 0.8  # full-catalogue ranking learned from 32 negatives per step
