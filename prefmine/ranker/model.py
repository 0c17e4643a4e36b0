"""Fused sequential ranker (SASRec-style), one self-contained file with its config.

A user's behaviour history (item ids and event types, oldest first) runs through causal self-attention; the
hidden state at each position scores every catalogue item by a dot product with the item's representation,
trained with full-softmax cross-entropy against the next item at every position.

Item representation: `fusion="gate"` mixes a learned ID embedding with the item's (frozen) text embedding from the
encoder, projected to the model width: e = id + g * W t, g = sigmoid(U [id; W t]). `fusion="none"` is the ID-only
variant, the baseline that shows what text adds. Index 0 is padding; item i of the dataset is index i + 1 here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RankerConfig:
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    fusion: str = "gate"  # "gate" (ID + text) or "none" (ID only)
    epochs: int = 20
    min_steps: int = 0  # train at least this many optimizer steps (more epochs on small data)
    max_epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 2020
    eval_users: int = 2000  # validation users scored after each epoch


PRESETS = {
    "tiny": RankerConfig(dim=64, layers=2, epochs=10, min_steps=300, batch_size=64),
    "base": RankerConfig(dim=128, layers=2, heads=4, epochs=100, batch_size=128),
    "large": RankerConfig(dim=256, layers=4, heads=8, epochs=200, batch_size=256, max_len=200),
}

N_EVENTS = 6  # padding + view, click, cart, buy, rate


class FusedRanker(nn.Module):
    def __init__(self, cfg: RankerConfig, n_items: int, text_emb: np.ndarray | None = None):
        super().__init__()
        if cfg.fusion not in ("gate", "none"):
            raise ValueError(f"ranker fusion must be 'gate' or 'none', got {cfg.fusion!r}")
        self.cfg, self.n_items = cfg, n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.event_emb = nn.Embedding(N_EVENTS, cfg.dim, padding_idx=0)
        self.use_text = cfg.fusion == "gate" and text_emb is not None
        if self.use_text:
            text = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
            text = torch.cat([torch.zeros(1, text.shape[1]), text])
            self.register_buffer("text", text)
            self.text_proj = nn.Linear(text.shape[1], cfg.dim)
            self.gate = nn.Linear(2 * cfg.dim, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def item_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Representations of items (model indices); all non-padding items when idx is None."""
        if idx is None:
            idx = torch.arange(1, self.n_items + 1, device=self.item_emb.weight.device)
        e = self.item_emb(idx)
        if self.use_text:
            t = self.text_proj(self.text[idx])
            g = torch.sigmoid(self.gate(torch.cat([e, t], -1)))
            e = e + g * t
        return e

    def forward(self, items: torch.Tensor, events: torch.Tensor, targets: torch.Tensor | None = None):
        """Training loss when `targets` is given (so a DeepSpeed engine's forward trains it), else hidden states."""
        if targets is not None:
            return self.loss(items, events, targets)
        return self.hidden(items, events)

    def hidden(self, items: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, dim] for left-padded sequences of width L <= max_len.

        Positions count back from the sequence end (the last item is always position max_len - 1), so a batch
        trimmed of its all-padding leading columns (`trim_padding`) gives the same states as the full width.
        """
        L = items.shape[1]
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=items.device).unsqueeze(0)
        x = self.item_vectors(items) + self.pos_emb(pos) + self.event_emb(events)
        x = self.drop(x)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=items.device), 1)
        eye = torch.eye(L, dtype=torch.bool, device=items.device)
        # no attention to the future nor to padding; a padded position attends to itself so it stays finite
        mask = causal.unsqueeze(0) | ((items == 0).unsqueeze(1) & ~eye)
        h = self.encoder(x, mask=mask.repeat_interleave(self.cfg.heads, 0))
        return self.norm(h)

    def loss(self, items, events, targets) -> torch.Tensor:
        """Full-softmax cross-entropy of the next item, computed only at positions that have a target."""
        items, events, targets = trim_padding(items, events, targets)
        h = self.hidden(items, events)
        mask = targets > 0
        logits = h[mask] @ self.item_vectors().T  # [n_targets, n_items]
        return F.cross_entropy(logits, targets[mask] - 1)

    @torch.no_grad()
    def user_states(self, items: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        return self.hidden(*trim_padding(items, events))[:, -1]


def trim_padding(items: torch.Tensor, *others: torch.Tensor):
    """Drop the leading columns that are padding in every row (short histories need no 50-wide attention)."""
    nonpad = (items != 0).any(0)
    start = int(nonpad.to(torch.int8).argmax()) if bool(nonpad.any()) else items.shape[1] - 1
    return (items[:, start:], *(o[:, start:] for o in others))


def pad_left(seqs, max_len: int, dtype=np.int64) -> np.ndarray:
    out = np.zeros((len(seqs), max_len), dtype=dtype)
    for i, s in enumerate(seqs):
        s = np.asarray(s)[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out
