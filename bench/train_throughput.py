"""Benchmark: encoder training throughput of Ray Train + DeepSpeed (2 CPU workers, ZeRO-2) against a plain
single-process PyTorch loop, on the same model (BERT MLM) and the same global batch, in one run.

The plain loop is timed with 1 and with all CPU threads and its best is the baseline; the distributed run uses one
thread per worker (the setting that is fastest here; figures in bench/README.md). Throughput is samples/s over the epochs after
the first (the first includes start-up and DeepSpeed's op builds). `ratio` = distributed / plain; issue 4's goal is
at least 0.8 on this 2-core CPU.

On a machine with CUDA GPUs the same comparison runs on them: one DeepSpeed worker per GPU (NCCL, ZeRO-2, bf16
from `zero2.json`'s "auto") against a plain single-GPU loop under bf16 autocast, and both report tokens/s and
model FLOPs utilisation: 6 x non-embedding parameters + 12 x layers x hidden x seq FLOPs per trained token,
divided by the GPUs' dense bf16 peak (`--peak-tflops`, looked up from the device name when known).

    python -m bench.train_throughput [--out RESULT.json] [--quick] [--plan] [--preset tiny|base|large]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan
from bench.data_scale import machine


def make_task(preset: str, batch: int, n: int, epochs: int):
    from prefmine.text.encoder import bert_config
    from prefmine.text.tasks import MLMTask
    from prefmine.train_config import preset as tree_preset

    cfg = tree_preset(preset).encoder
    cfg.batch_size, cfg.mlm_epochs = batch, epochs
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, size=(n, cfg.max_len))
    mask = np.ones_like(ids)
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    return MLMTask(cfg, bert_config(cfg, cfg.vocab_size), special, ids, mask), cfg


PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(model, cfg) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters (forward + backward matmuls) plus attention scores."""
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6.0 * dense + 12.0 * cfg.layers * cfg.hidden * cfg.max_len


def plain_loop(task, threads: int, epochs: int, device: str = "cpu") -> dict:
    """Single process: the same model, batches, loss and AdamW as the distributed run (bf16 autocast on GPU)."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(task.seed)
    model = task.build_model().to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else contextlib.nullcontext
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    rates = []
    for epoch in range(epochs):
        model.train()
        t, samples = time.perf_counter(), 0
        for batch in task.batches(epoch, 0, 1):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            samples += len(batch["input_ids"])
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(samples / (time.perf_counter() - t))
    return {"threads": threads, "samples_per_s_by_epoch": [round(r, 2) for r in rates],
            "samples_per_s": round(float(np.mean(rates[1:] if len(rates) > 1 else rates)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "train_throughput")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="", choices=["", "tiny", "base", "large"], help="default: base on CPU, "
                    "large on GPU")
    ap.add_argument("--batch", type=int, default=0, help="global batch (split over the workers); default 32 on "
                    "CPU, 64 per GPU")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak per GPU for MFU")
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    a.preset = a.preset or ("large" if gpus else "base")
    a.batch = a.batch or (64 * gpus if gpus else 32)
    n = (640 if a.quick else 1920) * (max(gpus, 1) * 4 if gpus else 1)
    epochs = 3 if a.quick else 4
    out = Path(a.out) if a.out else default_out("train_throughput", a.quick)
    if a.plan:
        return print_plan("train_throughput", source="synthetic token sequences (no input data)", preset=a.preset,
                          global_batch=a.batch, samples=n, epochs=epochs, gpus=gpus, out=out)

    task, cfg = make_task(a.preset, a.batch // max(gpus, 1) if gpus else a.batch, n // max(gpus, 1), epochs)
    if gpus:
        plain = [plain_loop(task, 1, epochs, "cuda")]
    else:
        plain = [plain_loop(task, t, epochs) for t in sorted({1, os.cpu_count() or 1})]
    best = max(plain, key=lambda r: r["samples_per_s"])
    print(json.dumps({"plain": plain}), flush=True)

    from cluster.ds_train import DistConfig, train
    from cluster.ray_env import ensure_ray

    os.environ["OMP_NUM_THREADS"] = "1"
    ray = ensure_ray(num_cpus=None if gpus else 2, dashboard=False)
    workers = gpus or 2
    ds_task, _ = make_task(a.preset, a.batch // workers, n, epochs)
    storage = Path(os.environ.get("TMPDIR", "/tmp")) / "prefmine-bench-train"
    r = train(ds_task, f"bench-throughput-{time.strftime('%Y%m%d-%H%M%S')}", storage,
              DistConfig(num_workers=workers, use_gpu=bool(gpus), deepspeed_config="zero2.json",
                         checkpoint_every=epochs))
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
    if gpus:  # tokens/s and model FLOPs utilisation (every sample is max_len real tokens here)
        name = torch.cuda.get_device_name(0)
        peak = a.peak_tflops or peak_tflops(name)
        per_token = flops_per_token(task.build_model(), cfg)
        plain_tps, ds_tps = best["samples_per_s"] * cfg.max_len, ds_rate * cfg.max_len
        result["gpu"] = {"device": name, "gpus": gpus, "precision": "bf16", "peak_tflops_per_gpu": peak,
                         "flops_per_token": per_token, "ds_tokens_per_s": round(ds_tps), "plain_tokens_per_s":
                         round(plain_tps), "ds_mfu": round(ds_tps * per_token / (peak * 1e12 * gpus), 4) if peak
                         else None, "plain_mfu": round(plain_tps * per_token / (peak * 1e12), 4) if peak else None}
        result["settings"]["deepspeed"] = "zero2.json, bf16 (NCCL)"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("ds_samples_per_s", "plain_samples_per_s", "ratio")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
