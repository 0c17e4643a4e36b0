"""The contract between a model and the distributed trainer in `cluster/ds_train.py`.

A task owns its model, data and loss; the trainer owns processes, DeepSpeed engines, checkpoints and progress.
Tasks are plain picklable objects (numpy arrays, configs) so Ray can ship them to workers; they never import Ray.
`DistConfig` says how the trainer distributes a run (workers, GPU, DeepSpeed config, checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from prefmine.config import ConfigError, resource_map

if TYPE_CHECKING:  # annotations only: the config tree reads DistConfig without importing torch
    import torch
    from torch import nn


@dataclass
class DistConfig:
    """How to distribute a training run."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    deepspeed_config: str = "zero2.json"  # file in cluster/deepspeed/ (zero0-3, *_offload) or a path
    grad_accum: int = 0  # gradient accumulation steps; 0: as the DeepSpeed JSON says
    max_failures: int = 1
    log_every: int = 20
    checkpoint_every: int = 0  # epochs between checkpoints; 0: about ten per run, and always the last epoch
    storage: str = ""  # Ray Train runs and checkpoints: a path or URI (prefmine.storage); "": the bundle's .train/
    # custom Ray resources each training worker asks for besides CPU/GPU, e.g. {worker_node: 1}: the workers then
    # run only on nodes started with that resource (`ray start --resources '{"worker_node": 2}'`)
    worker_resources: dict = field(default_factory=dict)
    # how often Ray Train's controller polls the workers. A worker's `report` waits for the previous epoch's result
    # to be taken (a queue of one), so with Ray's default (2 s) every epoch costs at least 2 s however small it is
    poll_interval_s: float = 0.2

    def __post_init__(self):
        self.worker_resources = resource_map(self.worker_resources, "dist.worker_resources")
        if not self.poll_interval_s > 0:
            raise ConfigError(f"dist.poll_interval_s: must be > 0, got {self.poll_interval_s}")


class TrainTask(Protocol):
    epochs: int
    batch_size: int  # per worker
    lr: float
    weight_decay: float
    seed: int

    def build_model(self) -> nn.Module: ...

    def steps_per_epoch(self, world_size: int) -> int: ...

    def batches(self, epoch: int, rank: int, world_size: int) -> Iterator[dict[str, torch.Tensor]]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


def shard_order(n: int, batch_size: int, epoch: int, rank: int, world_size: int, seed: int) -> list[np.ndarray]:
    """Shuffle 0..n-1 with a seed shared by all ranks, give each rank an equal number of full batches.

    Every rank gets the same number of steps (DeepSpeed's collectives need that); the few examples that do not fill
    a batch on every rank are dropped this epoch and come back under the next epoch's shuffle.
    """
    rng = np.random.default_rng(seed * 100003 + epoch)
    perm = rng.permutation(n)
    steps = max(1, n // (batch_size * world_size))
    if n < batch_size * world_size:  # tiny data: every rank sees a (wrapped) full batch
        perm = np.resize(perm, batch_size * world_size)
    return [perm[(s * world_size + rank) * batch_size:(s * world_size + rank + 1) * batch_size] for s in range(steps)]


def steps_for(n: int, batch_size: int, world_size: int) -> int:
    return max(1, n // (batch_size * world_size))
