"""Incremental ranker update: the serving ranker's weights fine-tuned on the updated histories, in process.

The update loop's candidate (cluster/update_policy.py) gets a ranker that has seen the new events: the serving
bundle's `ranker/` weights are loaded, trained further for `steps` optimizer steps (Adam, a fresh optimizer state
at `lr`: the bundle keeps no optimizer state) on next-item windows cut from the updated histories (catalogue
histories plus the new interactions, never the guard's held-out events), and written into the candidate's own
`ranker/` with the serving index rebuilt for the new item vectors (`save_retrieval_index`). Everything else in
the ranker directory (config, frozen text embeddings, the blend's weights and co-occurrence, Search's index) is
kept: the blend standardises with the moments of the item vectors it is loaded with, so it follows the new
weights without being refitted.

Inputs are what serving and the guard feed the ranker for a catalogue rewritten from item lists: every event
`rate` and every time gap unknown. Catalogue items that were cold (no interaction at training time: text-only
vectors, kept out of the softmax) and have interactions now become warm, so their ID term starts learning.
Items the catalogue does not hold are not added here (the item table does not grow in an update).

Why in process on CPU with plain torch rather than Ray Train + DeepSpeed (cluster/ds_train.py): the update is a few
hundred small steps on one process's data; a Train run's worker start-up and DeepSpeed initialisation would cost
more than the steps, and the candidate is built in the same process that already holds the histories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefmine.data.dataset import EVENTS
from prefmine.ranker.model import FusedRanker
from prefmine.ranker.task import make_windows

RATE = EVENTS.index("rate")  # the event type serving assumes for a catalogue history without stored types


@dataclass(frozen=True)
class RankerUpdate:
    """The fine-tune's numbers (from UpdateConfig's ranker_* keys)."""

    steps: int = 100  # optimizer steps
    lr: float = 3e-4
    batch_size: int = 0  # 0: the ranker's own training batch size
    seed: int = 0
    eval_windows: int = 512  # windows the loss before and after is measured on (fixed, seeded)


def windows(histories, max_len: int):
    """(items, events, gaps, targets) next-item windows of the histories, as serving feeds them (`rate`, unknown
    gaps); model indices, left-padded."""
    seqs = [np.asarray(h, dtype=np.int64) for h in histories if len(h) >= 2]
    return make_windows(seqs, [np.full(len(s), RATE) for s in seqs], max_len)


def _batch(arrays, idx):
    x, e, g, y = (torch.from_numpy(a[idx]) for a in arrays)
    return x, e, g, y


@torch.no_grad()
def mean_loss(model: FusedRanker, arrays, idx: np.ndarray, batch: int = 256) -> float:
    """The model's next-item loss (eval mode: no dropout) over the windows `idx`, weighted by targets."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(idx), batch):
        x, e, g, y = _batch(arrays, idx[i:i + batch])
        t = int((y > 0).sum())
        total += float(model(x, e, y, g)) * t
        n += t
    return total / max(n, 1)


def finetune(model: FusedRanker, histories, cfg: RankerUpdate) -> dict:
    """Train `model` further, in place, on next-item windows of `histories` (dataset item indices, oldest first).
    Returns what the manifest records: steps, windows, newly warm items, loss before and after, seconds. Raises
    ValueError when no history has two items, or when training left a non-finite weight (no candidate then)."""
    t0 = time.time()
    arrays = windows(histories, model.cfg.max_len)
    if len(arrays[0]) == 0:
        raise ValueError("no history has two or more items: nothing to fine-tune the ranker on")
    rng = np.random.default_rng(cfg.seed)
    eval_idx = np.sort(rng.choice(len(arrays[0]), min(cfg.eval_windows, len(arrays[0])), replace=False))
    seen = np.unique(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories if len(h)]))
    newly_warm = int((~model.warm[seen + 1]).sum())
    model.warm[seen + 1] = True  # cold items with interactions now: their ID term trains from here
    before = mean_loss(model, arrays, eval_idx)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=model.cfg.weight_decay)
    batch = cfg.batch_size or model.cfg.batch_size
    model.train()
    train_loss = []
    for _ in range(cfg.steps):
        x, e, g, y = _batch(arrays, rng.integers(0, len(arrays[0]), batch))
        loss = model(x, e, y, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_loss.append(float(loss.detach()))
    model.eval()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(f"ranker fine-tune at lr {cfg.lr} left non-finite weights; no candidate ranker")
    after = mean_loss(model, arrays, eval_idx)
    return {"steps": cfg.steps, "lr": cfg.lr, "batch_size": batch, "windows": int(len(arrays[0])),
            "eval_windows": int(len(eval_idx)), "newly_warm_items": newly_warm,
            "loss_before": round(before, 5), "loss_after": round(after, 5),
            "train_loss_first_last": [round(train_loss[0], 5), round(train_loss[-1], 5)] if train_loss else [],
            "seconds": round(time.time() - t0, 2)}


def update_ranker_dir(ranker_dir: str | Path, histories, cfg: RankerUpdate, retrieval=None) -> dict:
    """Fine-tune the ranker saved in `ranker_dir` (the candidate's own copy: its model.pt is replaced, written
    aside and renamed) on `histories`, then rebuild its serving index for the new item vectors (`retrieval`: a
    RetrievalConfig, None for the defaults). Returns `finetune`'s record with the index's."""
    from prefmine.ranker.retrieval import save_retrieval_index
    from prefmine.ranker.runtime import load_ranker

    d = Path(ranker_dir)
    model = load_ranker(d)
    record = finetune(model, histories, cfg)
    tmp = d / ".model.pt.tmp"
    torch.save(model.state_dict(), tmp)
    (d / "model.pt").unlink()  # never written through: the old file may be a link shared with the parent
    tmp.rename(d / "model.pt")
    record["retrieval"] = save_retrieval_index(d, retrieval)
    return record
