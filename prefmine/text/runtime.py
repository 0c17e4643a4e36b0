"""The encoder part of a bundle: `save_encoder` writes the trained BERT and its settings, `load_encoder` and
`EncoderRuntime` load them (with the tokenizer saved beside them) and embed texts (no Ray)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

from prefmine.config import resource_map
from prefmine.text.encoder import embed_texts


@dataclass
class EmbedConfig:
    """How the batch-inference job runs."""

    batch_size: int = 256  # texts per actor call
    max_actors: int = 0  # 0: one per CPU of the cluster (divided by cpus_per_actor)
    cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    rows_per_block: int = 4096  # input block size: the unit Ray Data schedules
    # custom Ray resources each actor asks for, e.g. {worker_node: 1}: actors run only on nodes that advertise it
    actor_resources: dict = field(default_factory=dict)

    def __post_init__(self):
        self.actor_resources = resource_map(self.actor_resources, "embed.actor_resources")

    def max_actors_on(self, cluster: dict[str, float], texts: int) -> int:
        """How many actors to start for `texts` on a cluster whose total resources are `cluster` (Ray's
        `cluster_resources()`): `max_actors`, or as many as the CPUs and each custom resource asked for allow,
        and never more than there are batches."""
        batches = -(-texts // self.batch_size)
        asks = {"CPU": self.cpus_per_actor, **self.actor_resources}
        fits = [cluster.get(name, 0) / amount for name, amount in asks.items() if amount > 0]
        actors = self.max_actors or (max(1, int(min(fits))) if fits else batches)
        return max(1, min(actors, batches))


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
