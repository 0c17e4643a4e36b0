"""The fused ranker's config (prefmine/ranker/model.py), apart from the model so that the config tree, the command
line and the serving checks read it without importing torch (as Hugging Face keeps `configuration_*.py` beside
`modeling_*.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RankerConfig:
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    fusion: str = "gate"  # "gate" | "concat" (ID + text) or "none" (ID only)
    history_pool: bool = True  # add the running mean of history item vectors to each state
    time_gaps: bool = True  # time-gap embeddings between consecutive events
    gap_dropout: float = 0.1  # share of gaps replaced by "unknown" in training (clients may send no times)
    id_dropout: float = 0.0  # share of warm items whose ID term is dropped in training (text-only robustness)
    softmax: str = "full"  # "full" or "sampled"
    negatives: int = 2048  # shared uniform negatives per step when softmax="sampled"
    epochs: int = 20
    min_steps: int = 0  # train at least this many optimizer steps (more epochs on small data)
    max_epochs: int = 200
    patience: int = 0  # stop after this many epochs without a better `select_metric` (0: never)
    select_metric: str = "NDCG@10"  # validation metric that picks the best epoch and drives early stopping
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 2020
    eval_users: int = 2000  # validation users scored after each epoch
    blend: bool = True  # after training, blend co-occurrence and text similarity in (weights chosen on validation)
    blend_neighbours: int = 100  # co-occurrence similarities kept per item (ranker/blend.py)
