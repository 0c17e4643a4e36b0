"""The encoder part of a bundle: `save_encoder` writes the trained BERT and its settings, `load_encoder` and
`EncoderRuntime` load them (with the tokenizer saved beside them) and embed texts (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

from prefmine.text.encoder import embed_texts


def save_encoder(encoder_dir: str | Path, bert: BertModel, cfg) -> Path:
    """Write the BERT weights and config (Hugging Face layout) and encoder_config.json (the EncoderConfig `cfg`,
    vocabulary size, max_len) into `encoder_dir`; the tokenizer is saved there by whoever built it, and the
    embeddings are added by the embedding job."""
    from prefmine import config as C

    d = Path(encoder_dir)
    d.mkdir(parents=True, exist_ok=True)
    bert.save_pretrained(str(d))
    (d / "encoder_config.json").write_text(json.dumps({"config": C.to_dict(cfg), "vocab_size": bert.config.vocab_size,
                                                       "max_len": cfg.max_len}, indent=2))
    return d


def load_encoder(encoder_dir: str | Path):
    """(tokenizer, BertModel in eval mode) from an encoder directory (a Hugging Face BERT checkpoint)."""
    d = Path(encoder_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} holds no encoder (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(str(d), use_fast=True)
    return tokenizer, BertModel.from_pretrained(str(d), add_pooling_layer=False).eval()


class EncoderRuntime:
    def __init__(self, bundle_path: str | Path):
        d = Path(bundle_path) / "encoder"
        torch.set_num_threads(1)
        self.tokenizer, self.model = load_encoder(d)
        meta = json.loads((d / "encoder_config.json").read_text())
        self.max_len = int(meta.get("max_len", 64))
        self.item_embeddings = np.load(d / "item_embeddings.npy")

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.model, self.tokenizer, list(texts), self.max_len)
