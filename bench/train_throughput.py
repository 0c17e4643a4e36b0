"""Benchmark: encoder training throughput of Ray Train + DeepSpeed (2 CPU workers, ZeRO-2) against a plain
single-process PyTorch loop, on the same model (BERT MLM) and the same global batch, in one run.

The plain loop is timed with 1 and with all CPU threads and its best is the baseline; the distributed run uses one
thread per worker (the setting that is fastest here, see README). Throughput is samples/s over the epochs after
the first (the first includes start-up and DeepSpeed's op builds). `ratio` = distributed / plain; issue 4's goal is
at least 0.8 on this 2-core CPU.

    python -m bench.train_throughput --out RESULT.json [--quick] [--preset tiny|base]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.data_scale import machine


def make_task(preset: str, batch: int, n: int, epochs: int):
    from prefmine import config as C
    from prefmine.text.encoder import PRESETS, bert_config
    from prefmine.text.tasks import MLMTask

    cfg = C.resolve(PRESETS, preset)
    cfg.batch_size, cfg.mlm_epochs = batch, epochs
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, size=(n, cfg.max_len))
    mask = np.ones_like(ids)
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    return MLMTask(cfg, bert_config(cfg, cfg.vocab_size), special, ids, mask), cfg


def plain_loop(task, threads: int, epochs: int) -> dict:
    """Single process: the same model, batches, loss and AdamW as the distributed run."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(task.seed)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    rates = []
    for epoch in range(epochs):
        model.train()
        t, samples = time.perf_counter(), 0
        for batch in task.batches(epoch, 0, 1):
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            samples += len(batch["input_ids"])
        rates.append(samples / (time.perf_counter() - t))
    return {"threads": threads, "samples_per_s_by_epoch": [round(r, 2) for r in rates],
            "samples_per_s": round(float(np.mean(rates[1:] if len(rates) > 1 else rates)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="base", choices=["tiny", "base"])
    ap.add_argument("--batch", type=int, default=32, help="global batch (split over the workers)")
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n = 640 if a.quick else 1920
    epochs = 3 if a.quick else 4

    task, cfg = make_task(a.preset, a.batch, n, epochs)
    plain = [plain_loop(task, t, epochs) for t in sorted({1, os.cpu_count() or 1})]
    best = max(plain, key=lambda r: r["samples_per_s"])
    print(json.dumps({"plain": plain}), flush=True)

    from cluster.ds_train import DistConfig, train
    from cluster.ray_env import ensure_ray

    os.environ["OMP_NUM_THREADS"] = "1"
    ray = ensure_ray(num_cpus=2, dashboard=False)
    workers = 2
    ds_task, _ = make_task(a.preset, a.batch // workers, n, epochs)
    storage = Path(os.environ.get("TMPDIR", "/tmp")) / "prefmine-bench-train"
    r = train(ds_task, f"bench-throughput-{time.strftime('%Y%m%d-%H%M%S')}", storage,
              DistConfig(num_workers=workers, deepspeed_config="zero2.json", checkpoint_every=epochs))
    ray.shutdown()
    rates = [h["samples_per_s"] for h in r.history]
    ds_rate = float(np.mean(rates[1:] if len(rates) > 1 else rates))
    params = sum(p.numel() for p in task.build_model().parameters())
    result = {
        "bench": "train_throughput", "machine": machine(),
        "settings": {"model": f"BertForMaskedLM ({a.preset} preset: hidden {cfg.hidden}, layers {cfg.layers}, "
                              f"seq {cfg.max_len}, vocab {cfg.vocab_size})", "parameters": params,
                     "global_batch": a.batch, "samples_per_epoch": n, "epochs": epochs,
                     "deepspeed": "zero2.json, fp32 on CPU (gloo)", "workers": workers, "threads_per_worker": 1,
                     "timed": "epochs after the first"},
        "ds_samples_per_s": round(ds_rate, 2), "ds_samples_per_s_by_epoch": rates,
        "plain_samples_per_s": best["samples_per_s"], "plain_runs": plain,
        "ratio": round(ds_rate / best["samples_per_s"], 3),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("ds_samples_per_s", "plain_samples_per_s", "ratio")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
