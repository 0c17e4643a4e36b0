"""The ranker's training task for `cluster/ds_train.py`: windows of train sequences, next-item targets.

Each user's chronological train sequence is cut from the end into windows of max_len + 1 items; a window's
first max_len items are the input and its last max_len the targets (every position predicts its next item).
After each epoch rank 0 scores validation users over the full catalogue (train history excluded) for NDCG@10.
"""

from __future__ import annotations

import numpy as np
import torch

from prefmine.metrics import ranking_metrics, top_k
from prefmine.ranker.model import FusedRanker, RankerConfig, pad_left
from prefmine.train_task import shard_order, steps_for


def make_windows(seqs, events, max_len: int):
    xs, es, ys = [], [], []
    for s, e in zip(seqs, events):
        s = np.asarray(s) + 1
        e = np.asarray(e) + 1
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            w, we = s[start:end], e[start:end]
            xs.append(w[:-1])
            es.append(we[:-1])
            ys.append(w[1:])
            end = start + 1 if start > 0 else 0
    return pad_left(xs, max_len), pad_left(es, max_len), pad_left(ys, max_len)


class RankerTask:
    def __init__(self, cfg: RankerConfig, n_items: int, train_seqs, train_events, text_emb=None,
                 valid_histories=None, valid_targets=None):
        self.cfg, self.n_items, self.text_emb = cfg, n_items, text_emb
        self.epochs, self.batch_size, self.lr = cfg.epochs, cfg.batch_size, cfg.lr
        self.weight_decay, self.seed = cfg.weight_decay, cfg.seed
        self.x, self.e, self.y = make_windows(train_seqs, train_events, cfg.max_len)
        if len(self.x) == 0:
            raise ValueError("no user has two or more train interactions: nothing to train the ranker on")
        # small data: more epochs until min_steps optimizer steps (assuming 2 workers), capped by max_epochs
        per_epoch = steps_for(len(self.x), cfg.batch_size, 2)
        self.epochs = int(min(cfg.max_epochs, max(cfg.epochs, -(-cfg.min_steps // per_epoch))))
        self.valid_histories = valid_histories or []
        self.valid_targets = valid_targets if valid_targets is not None else np.zeros(0, dtype=np.int64)

    def build_model(self) -> FusedRanker:
        return FusedRanker(self.cfg, self.n_items, self.text_emb)

    def steps_per_epoch(self, world_size: int) -> int:
        return steps_for(len(self.x), self.batch_size, world_size)

    def batches(self, epoch, rank, world_size):
        for idx in shard_order(len(self.x), self.batch_size, epoch, rank, world_size, self.seed):
            yield {"items": torch.from_numpy(self.x[idx]), "events": torch.from_numpy(self.e[idx]),
                   "targets": torch.from_numpy(self.y[idx])}

    def loss(self, model, batch):
        return model(batch["items"], batch["events"], batch["targets"])

    def evaluate(self, model) -> dict:
        if not len(self.valid_targets):
            return {}
        model.eval()
        scores = score_histories(model, self.valid_histories, self.cfg.max_len)
        top = top_k(scores, 10, [set(h.tolist()) for h in self.valid_histories])
        m = ranking_metrics(top, self.valid_targets, ks=(10,))
        return {"valid_NDCG@10": m["NDCG@10"], "valid_Recall@10": m["Recall@10"]}


@torch.no_grad()
def user_states(model: FusedRanker, histories, max_len: int, batch: int = 512) -> np.ndarray:
    out = []
    dev = next(model.parameters()).device
    for i in range(0, len(histories), batch):
        chunk = histories[i:i + batch]
        items = torch.from_numpy(pad_left([np.asarray(h) + 1 for h in chunk], max_len)).to(dev)
        events = (items > 0).long() * 5  # serving histories carry no event type: treat as `rate`
        out.append(model.user_states(items, events).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), dtype=np.float32)


@torch.no_grad()
def score_histories(model: FusedRanker, histories, max_len: int) -> np.ndarray:
    states = user_states(model, histories, max_len)
    vecs = model.item_vectors().float().cpu().numpy()
    return states @ vecs.T
