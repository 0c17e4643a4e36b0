"""The ranker's training task for `cluster/ds_train.py`: windows of train sequences, next-item targets.

Each user's chronological train sequence is cut from the end into windows of max_len + 1 items; a window's
first max_len items are the input and its last max_len the targets (every position predicts its next item).
After each epoch rank 0 scores validation users over the full catalogue (train history excluded) for NDCG@10 and
Recall@10; the trainer keeps the best epoch by `RankerConfig.select_metric` (NDCG@10 unless a protocol says
otherwise: the S3-Rec benchmark protocol stops on Recall@10) and stops after `patience` epochs without a better one.
Items with no train interaction are cold (`warm` mask): scored from text only, kept out of the training softmax.
"""

from __future__ import annotations

import numpy as np
import torch

from prefmine.metrics import ranking_metrics, top_k
from prefmine.ranker.model import GAP_UNKNOWN, FusedRanker, RankerConfig, gap_buckets, pad_left
from prefmine.train_task import shard_order, steps_for

RATE_INPUT = 5  # the model's input index of `rate` (EVENTS index 4, + 1 for padding)


def make_windows(seqs, events, max_len: int, times=None):
    """(inputs, event types, gap buckets, targets), each [n_windows, max_len], left-padded, model indices."""
    xs, es, gs, ys = [], [], [], []
    for u, (s, e) in enumerate(zip(seqs, events)):
        s = np.asarray(s) + 1
        e = np.asarray(e) + 1
        g = gap_buckets(times[u]) if times is not None else np.full(len(s), GAP_UNKNOWN)
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            xs.append(s[start:end - 1])
            es.append(e[start:end - 1])
            gs.append(g[start:end - 1])
            ys.append(s[start + 1:end])
            end = start + 1 if start > 0 else 0
    return pad_left(xs, max_len), pad_left(es, max_len), pad_left(gs, max_len), pad_left(ys, max_len)


def warm_items(n_items: int, train_seqs) -> np.ndarray:
    """True for items with at least one train interaction."""
    warm = np.zeros(n_items, dtype=bool)
    for s in train_seqs:
        warm[np.asarray(s, dtype=np.int64)] = True
    return warm


SELECT_METRICS = ("NDCG@10", "Recall@10")  # what `evaluate` reports, so what the trainer can select on


class RankerTask:
    def __init__(self, cfg: RankerConfig, n_items: int, train_seqs, train_events, text_emb=None,
                 valid_histories=None, valid_targets=None, train_times=None, valid_times=None, valid_events=None):
        if cfg.select_metric not in SELECT_METRICS:
            raise ValueError(f"ranker select_metric must be one of {SELECT_METRICS}, got {cfg.select_metric!r}")
        self.select_metric = f"valid_{cfg.select_metric}"  # the trainer keeps the epoch with the best value
        self.cfg, self.n_items, self.text_emb = cfg, n_items, text_emb
        self.epochs, self.batch_size, self.lr = cfg.epochs, cfg.batch_size, cfg.lr
        self.weight_decay, self.seed, self.patience = cfg.weight_decay, cfg.seed, cfg.patience
        self.warm = warm_items(n_items, train_seqs)
        self.x, self.e, self.g, self.y = make_windows(train_seqs, train_events, cfg.max_len, train_times)
        if len(self.x) == 0:
            raise ValueError("no user has two or more train interactions: nothing to train the ranker on")
        # small data: more epochs until min_steps optimizer steps (assuming 2 workers), capped by max_epochs
        per_epoch = steps_for(len(self.x), cfg.batch_size, 2)
        self.epochs = int(min(cfg.max_epochs, max(cfg.epochs, -(-cfg.min_steps // per_epoch))))
        self.valid_histories = valid_histories or []
        self.valid_targets = valid_targets if valid_targets is not None else np.zeros(0, dtype=np.int64)
        self.valid_times = valid_times
        self.valid_events = valid_events  # event types of the validation histories (None: `rate`)

    def build_model(self) -> FusedRanker:
        return FusedRanker(self.cfg, self.n_items, self.text_emb, self.warm)

    def steps_per_epoch(self, world_size: int) -> int:
        return steps_for(len(self.x), self.batch_size, world_size)

    def batches(self, epoch, rank, world_size):
        for idx in shard_order(len(self.x), self.batch_size, epoch, rank, world_size, self.seed):
            yield {"items": torch.from_numpy(self.x[idx]), "events": torch.from_numpy(self.e[idx]),
                   "gaps": torch.from_numpy(self.g[idx]), "targets": torch.from_numpy(self.y[idx])}

    def loss(self, model, batch):
        return model(batch["items"], batch["events"], batch["targets"], batch["gaps"])

    def evaluate(self, model) -> dict:
        if not len(self.valid_targets):
            return {}
        model.eval()
        scores = score_histories(model, self.valid_histories, self.cfg.max_len, self.valid_times, self.valid_events)
        top = top_k(scores, 10, [set(h.tolist()) for h in self.valid_histories])
        m = ranking_metrics(top, self.valid_targets, ks=(10,))
        return {"valid_NDCG@10": m["NDCG@10"], "valid_Recall@10": m["Recall@10"]}


@torch.no_grad()
def user_states(model: FusedRanker, histories, max_len: int, times=None, batch: int = 512,
                events=None) -> np.ndarray:
    """Last hidden state per history (dataset item indices, oldest first); `times` (seconds, aligned with each
    history) give the time-gap features, None means unknown gaps; `events` (indices into
    prefmine.data.dataset.EVENTS, aligned with each history) the event types, None means every event is `rate`
    (a caller that knows only the items)."""
    out = []
    dev = next(model.parameters()).device
    for i in range(0, len(histories), batch):
        chunk = histories[i:i + batch]
        items = torch.from_numpy(pad_left([np.asarray(h) + 1 for h in chunk], max_len)).to(dev)
        if events is None:
            types = (items > 0).long() * RATE_INPUT
        else:
            types = torch.from_numpy(pad_left([np.asarray(e, dtype=np.int64) + 1 for e in events[i:i + batch]],
                                              max_len)).to(dev)
        gaps = None
        if times is not None:
            gaps = torch.from_numpy(pad_left([gap_buckets(t) for t in times[i:i + batch]], max_len)).to(dev)
        out.append(model.user_states(items, types, gaps).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), dtype=np.float32)


@torch.no_grad()
def score_histories(model: FusedRanker, histories, max_len: int, times=None, events=None) -> np.ndarray:
    states = user_states(model, histories, max_len, times, events=events)
    vecs = model.item_vectors().float().cpu().numpy()
    return states @ vecs.T
