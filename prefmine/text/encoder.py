"""BERT text encoder: its config, the models each training stage uses, and mean-pooled embeddings.

Stages: (1) masked-language-model pretraining of a small BERT on the corpus (`BertForMaskedLM`), (2) fine-tuning
the same encoder to predict a review's rating from its text (`RatingModel`: BERT + mean pooling + linear head,
MSE on the standardised rating), (3) contrastive fine-tuning (`TextMatcher`): a user's text history against the
text of the next item they chose, other items of the batch as negatives, (4) embedding every item's and user's
text (mean pooling, L2-normalised). All weights are plain transformers models, so the encoder directory is a
regular Hugging Face checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from prefmine.text.config import EncoderConfig  # in a module that needs no torch


def bert_config(cfg: EncoderConfig, vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                      max_position_embeddings=max(cfg.max_len, 32), type_vocab_size=2)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class RatingModel(nn.Module):
    """BERT + mean pooling + a linear head predicting a standardised rating."""

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, 1)

    def predict(self, input_ids, attention_mask) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(h, attention_mask)).squeeze(-1)

    def forward(self, input_ids, attention_mask, target=None):
        pred = self.predict(input_ids, attention_mask)
        return F.mse_loss(pred, target) if target is not None else pred


class TextMatcher(nn.Module):
    """One shared BERT encodes queries (user histories) and documents (item texts); the loss is the symmetric
    InfoNCE over the batch's query x document cosine similarities / temperature. A document of the same item as
    the positive (popular items recur within a batch) is not counted as a negative."""

    def __init__(self, bert: BertModel, temperature: float = 0.05):
        super().__init__()
        self.bert = bert
        self.temperature = temperature

    def encode(self, input_ids, attention_mask) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(h, attention_mask), dim=-1)

    def forward(self, q_ids, q_mask, d_ids, d_mask, d_item):
        q, d = self.encode(q_ids, q_mask), self.encode(d_ids, d_mask)
        logits = q @ d.T / self.temperature
        same = (d_item[:, None] == d_item[None, :]) & ~torch.eye(len(d_item), dtype=torch.bool, device=q.device)
        logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
        labels = torch.arange(len(q), device=q.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@torch.no_grad()
def embed_texts(bert: BertModel, tokenizer, texts, max_len: int, batch_size: int = 128) -> np.ndarray:
    """L2-normalised mean-pooled embeddings [len(texts), hidden], in the order of `texts`.

    Texts are batched by length (longest first) so a batch pads to its own longest text, not the corpus's."""
    bert.eval()
    device = next(bert.parameters()).device
    texts = [t or "" for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), bert.config.hidden_size), dtype=np.float32)
    for i in range(0, len(texts), batch_size):
        idx = order[i:i + batch_size]
        enc = tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=max_len,
                        return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        out[idx] = F.normalize(mean_pool(h, mask), dim=-1).float().cpu().numpy()
    return out
