"""Per-epoch training metrics on disk: a JSON-lines file and TensorBoard event files, written by rank 0.

    <storage>/<run name>/metrics.jsonl       one JSON object per epoch (what Ray Train reports, minus history)
    <storage>/<run name>/tensorboard/        `tensorboard --logdir <bundle>/.train` shows every run's curves

A run resumed from a checkpoint (FailureConfig restart) rewrites metrics.jsonl from the checkpoint's history and
purges TensorBoard events after the resumed epoch, so neither holds the epochs that were run twice. On a
multi-node cluster the storage path must be shared (as Ray Train's storage_path already has to be).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path


class EpochLog:
    def __init__(self, run_dir: str | Path, history: list[dict], start_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.jsonl.write_text("".join(json.dumps(m) + "\n" for m in history))
        self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_epoch if start_epoch else None)

    def write(self, metrics: dict) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        step = int(metrics["epoch"])
        for k, v in metrics.items():
            if k != "epoch" and isinstance(v, numbers.Real):
                self.writer.add_scalar(k.replace("@", "_at_"), float(v), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
