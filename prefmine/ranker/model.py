"""Fused sequential ranker (SASRec-style), one self-contained file; its config is `prefmine/ranker/config.py`.

A user's behaviour history (item ids, event types and the time gaps between events, oldest first) runs through
causal self-attention; the hidden state at each position scores every catalogue item by a dot product with the
item's representation, trained with cross-entropy against the next item at every position.

Inputs per position: item vector + position (counted back from the newest event) + event type (view, click, cart,
buy, rate) + time gap since the previous event (log2-minute buckets; "unknown" when a client sends no times, which
training simulates by dropping gaps at random so serving without times is not out of distribution).

Item representation (`fusion`):
  "gate":   e = id + g * W t, g = sigmoid(U [id; W t])   (learned ID embedding mixed with the frozen text vector t)
  "concat": e = V [id; W t]
  "none":   e = id                                       (ID-only variant: the baseline that shows what text adds)
Cold items (no train interaction, `warm` mask) get no ID term: their vector comes from text alone, and they are
left out of the training softmax so their untrained IDs are never pushed down as negatives. `id_dropout` drops the
ID term of warm items at random during training, so text-only vectors live in the same space.

`history_pool` adds the running mean of the history's item vectors to the state: an item-to-item term (what
item-kNN exploits) that small catalogues with few interactions per user learn faster than attention alone.

Loss: full-softmax cross-entropy, or (`softmax="sampled"`) a softmax over the target and `negatives` items drawn
uniformly and shared by the batch, accidental hits masked (uniform proposal: the logQ correction is a constant),
for catalogues too large for a full softmax per step. Index 0 is padding; item i of the dataset is index i + 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prefmine.ranker.config import RankerConfig  # the model's config, in a module that needs no torch

EVENT_TYPES = 6  # padding + view, click, cart, buy, rate
GAP_BUCKETS = 24  # 0 padding, 1 unknown, 2.. log2(1 + minutes) buckets (the last one open-ended: > ~2 years)
GAP_UNKNOWN = 1


def gap_buckets(times: np.ndarray) -> np.ndarray:
    """Bucket index of the gap before each event (first event: unknown) for one user's times in seconds; a time
    that is not known (NaN: a stored history without times followed by a request's timed events) makes the gaps
    on either side of it unknown."""
    times = np.asarray(times, dtype=np.float64)
    out = np.full(len(times), GAP_UNKNOWN, dtype=np.int64)
    if len(times) > 1:
        minutes = np.diff(times) / 60.0
        known = np.isfinite(minutes)
        out[1:][known] = 2 + np.minimum(np.floor(np.log2(1.0 + np.maximum(minutes[known], 0.0))),
                                        GAP_BUCKETS - 3).astype(np.int64)
    return out


class FusedRanker(nn.Module):
    def __init__(self, cfg: RankerConfig, n_items: int, text_emb: np.ndarray | None = None,
                 warm: np.ndarray | None = None):
        super().__init__()
        if cfg.fusion not in ("gate", "concat", "none"):
            raise ValueError(f"ranker fusion must be 'gate', 'concat' or 'none', got {cfg.fusion!r}")
        if cfg.softmax not in ("full", "sampled"):
            raise ValueError(f"ranker softmax must be 'full' or 'sampled', got {cfg.softmax!r}")
        self.cfg, self.n_items = cfg, n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.event_emb = nn.Embedding(EVENT_TYPES, cfg.dim, padding_idx=0)
        self.gap_emb = nn.Embedding(GAP_BUCKETS, cfg.dim, padding_idx=0) if cfg.time_gaps else None
        # warm[i + 1]: item i has train interactions (defaults to every item); padding counts as cold
        w = torch.ones(n_items + 1, dtype=torch.bool) if warm is None else \
            torch.cat([torch.zeros(1, dtype=torch.bool), torch.as_tensor(np.asarray(warm, dtype=bool))])
        w[0] = False
        self.register_buffer("warm", w)
        self.use_text = cfg.fusion != "none" and text_emb is not None
        if self.use_text:
            text = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
            self.register_buffer("text", torch.cat([torch.zeros(1, text.shape[1]), text]))
            self.text_proj = nn.Linear(text.shape[1], cfg.dim)
            self.mix = nn.Linear(2 * cfg.dim, cfg.dim)  # the gate (gate) or the joint projection (concat)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        for emb in (self.item_emb, self.pos_emb, self.event_emb, self.gap_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def item_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Representations of items (model indices); all non-padding items when idx is None."""
        if idx is None:
            idx = torch.arange(1, self.n_items + 1, device=self.item_emb.weight.device)
        keep = self.warm[idx]
        if self.training and self.cfg.id_dropout > 0:
            keep = keep & (torch.rand(idx.shape, device=idx.device) >= self.cfg.id_dropout)
        e = self.item_emb(idx) * keep.unsqueeze(-1)
        if not self.use_text:
            return e
        return self._fuse(e, self.text[idx])

    def _fuse(self, e: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """An item's representation from its ID term `e` (zeros for a cold item) and frozen text vector."""
        t = self.text_proj(text)
        if self.cfg.fusion == "concat":
            return self.mix(torch.cat([e, t], -1))
        g = torch.sigmoid(self.mix(torch.cat([e, t], -1)))
        return e + g * t

    def cold_item_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Representations of items outside the trained catalogue from their text vectors alone [m, text dim]:
        the path of a cold item (no ID term), so a catalogue item written after training is scored like one."""
        if not self.use_text:
            raise ValueError("an ID-only ranker (fusion 'none' or no text) cannot score items it was not trained on")
        text = torch.as_tensor(text, dtype=self.text.dtype, device=self.text.device)
        return self._fuse(torch.zeros(len(text), self.cfg.dim, dtype=text.dtype, device=text.device), text)

    def forward(self, items: torch.Tensor, events: torch.Tensor, targets: torch.Tensor | None = None,
                gaps: torch.Tensor | None = None):
        """Training loss when `targets` is given (so a DeepSpeed engine's forward trains it), else hidden states."""
        if targets is not None:
            return self.loss(items, events, targets, gaps)
        return self.hidden(items, events, gaps)

    def hidden(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, dim] for left-padded sequences of width L <= max_len.

        Positions count back from the sequence end (the last item is always position max_len - 1), so a batch
        trimmed of its all-padding leading columns (`trim_padding`) gives the same states as the full width.
        `gaps` (bucket indices, see `gap_buckets`) may be None: every gap is then unknown.
        """
        L = items.shape[1]
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=items.device).unsqueeze(0)
        vecs = self.item_vectors(items)
        x = vecs + self.pos_emb(pos) + self.event_emb(events)
        if self.gap_emb is not None:
            if gaps is None:
                gaps = (items > 0).long() * GAP_UNKNOWN
            elif self.training and self.cfg.gap_dropout > 0:
                drop = torch.rand(gaps.shape, device=gaps.device) < self.cfg.gap_dropout
                gaps = torch.where(drop & (gaps > 0), torch.full_like(gaps, GAP_UNKNOWN), gaps)
            x = x + self.gap_emb(gaps)
        x = self.drop(x)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=items.device), 1)
        eye = torch.eye(L, dtype=torch.bool, device=items.device)
        # no attention to the future nor to padding; a padded position attends to itself so it stays finite
        mask = causal.unsqueeze(0) | ((items == 0).unsqueeze(1) & ~eye)
        h = self.norm(self.encoder(x, mask=mask.repeat_interleave(self.cfg.heads, 0)))
        if self.cfg.history_pool:  # causal running mean of the (non-padding) history item vectors
            present = (items > 0).unsqueeze(-1)
            h = h + (vecs * present).cumsum(1) / present.cumsum(1).clamp(min=1)
        return h

    def loss(self, items, events, targets, gaps=None) -> torch.Tensor:
        """Cross-entropy of the next item (full or sampled softmax), only at positions that have a target."""
        items, events, targets, gaps = trim_padding(items, events, targets, gaps)
        h = self.hidden(items, events, gaps)
        mask = targets > 0
        h, y = h[mask], targets[mask]
        if self.cfg.softmax == "sampled" and self.cfg.negatives < self.n_items:
            neg = torch.randint(1, self.n_items + 1, (self.cfg.negatives,), device=h.device)
            pos_logit = (h * self.item_vectors(y)).sum(-1, keepdim=True)
            neg_logit = h @ self.item_vectors(neg).T
            neg_logit = neg_logit.masked_fill((neg.unsqueeze(0) == y.unsqueeze(1)) | ~self.warm[neg], float("-inf"))
            logits = torch.cat([pos_logit, neg_logit], 1)
            return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=h.device))
        logits = (h @ self.item_vectors().T).masked_fill(~self.warm[1:], float("-inf"))  # [n_targets, n_items]
        return F.cross_entropy(logits, y - 1)

    @torch.no_grad()
    def user_states(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor | None = None):
        items, events, gaps = trim_padding(items, events, gaps)
        return self.hidden(items, events, gaps)[:, -1]


def trim_padding(items: torch.Tensor, *others: torch.Tensor | None):
    """Drop the leading columns that are padding in every row (short histories need no 50-wide attention)."""
    nonpad = (items != 0).any(0)
    start = int(nonpad.to(torch.int8).argmax()) if bool(nonpad.any()) else items.shape[1] - 1
    return (items[:, start:], *(None if o is None else o[:, start:] for o in others))


def pad_left(seqs, max_len: int, dtype=np.int64) -> np.ndarray:
    out = np.zeros((len(seqs), max_len), dtype=dtype)
    for i, s in enumerate(seqs):
        s = np.asarray(s)[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out
