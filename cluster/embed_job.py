"""Text embeddings at catalogue scale: Ray Data batch inference with an actor pool.

Each actor loads the encoder once (tokenizer + BERT from the encoder directory) and embeds batches of texts
(mean-pooled, L2-normalised, as `prefmine.text.encoder.embed_texts`). Rows carry their index, and the driver
streams finished batches into a memory-mapped `.npy` at those indices, so the result is in input order and the
driver never holds more than a few batches: a million-item catalogue is a cluster job, not a loop. The file is
written aside and renamed, so a reader never sees half of it.

Used by the encoder job for item and user embeddings; on its own:

    python -m cluster.embed_job --encoder BUNDLE/encoder --data DATASET --out DIR   # items + users
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from prefmine.text.config import EmbedConfig


class TextEmbedder:
    """Ray Data actor: the encoder loaded once per process, one call per batch of texts."""

    def __init__(self, encoder_dir: str, max_len: int):
        from cluster.ray_env import set_process_threads
        from prefmine.storage import get_dir, is_uri
        from prefmine.text.runtime import load_encoder

        set_process_threads()  # a URI: this node downloads the encoder once (its cache), never the driver's disk
        self.tokenizer, self.model = load_encoder(get_dir(encoder_dir) if is_uri(encoder_dir) else encoder_dir)
        self.max_len = max_len
        import torch

        if torch.cuda.is_available():  # a GPU actor (num_gpus_per_actor > 0)
            self.model = self.model.cuda()

    def __call__(self, batch: dict) -> dict:
        from prefmine.text.encoder import embed_texts

        texts = [str(t) for t in batch["text"]]
        vectors = embed_texts(self.model, self.tokenizer, texts, self.max_len, batch_size=len(texts))
        return {"row": batch["row"], "vector": vectors.astype(np.float32)}


def embed_on_ray(encoder_dir: str | Path, texts: list[str], out_path: str | Path, max_len: int,
                 cfg: EmbedConfig | None = None) -> np.ndarray:
    """Embed `texts` with a Ray Data actor pool into `out_path` (.npy, row i = texts[i]); returns it memory-mapped.

    `encoder_dir` is a local directory or a storage URI that `prefmine.storage.put_dir` wrote: with a URI the
    actors fetch the encoder from the store, so they may run on nodes that share no disk with the driver."""
    import pandas as pd
    import ray
    import ray.data

    from cluster.ray_env import ensure_ray
    from prefmine.storage import join, resolve

    cfg = cfg or EmbedConfig()
    ensure_ray()
    out_path = Path(out_path)
    fs, config_path = resolve(join(encoder_dir, "config.json"))
    with fs.open_input_stream(config_path) as f:
        dim = int(json.loads(f.read().decode())["hidden_size"])
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
    if texts:
        actors = cfg.max_actors_on(ray.cluster_resources(), len(texts))
        frame = pd.DataFrame({"row": np.arange(len(texts), dtype=np.int64), "text": [t or "" for t in texts]})
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        step = cfg.rows_per_block
        ds = ray.data.from_pandas([frame.iloc[i:i + step] for i in range(0, len(frame), step)])
        ds = ds.map_batches(TextEmbedder, fn_constructor_kwargs={"encoder_dir": str(encoder_dir), "max_len": max_len},
                            batch_size=cfg.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None,
                            resources=cfg.actor_resources or None)
        seen = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["row"]] = batch["vector"]
            seen += len(batch["row"])
        if seen != len(texts):
            raise RuntimeError(f"batch inference returned {seen} rows for {len(texts)} texts")
    out.flush()
    del out
    os.replace(tmp, out_path)
    return np.load(out_path, mmap_mode="r")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Embed a dataset's items and users with a trained encoder (Ray Data).")
    p.add_argument("--encoder", required=True, help="encoder directory (a bundle's encoder/)")
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--out", required=True, help="directory for item_embeddings.npy and user_text_embeddings.npy")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)

    from prefmine.data.dataset import load_dataset
    from prefmine.text.user_text import HistoryWriter, user_histories

    ds = load_dataset(args.data, with_reviews=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = EmbedConfig(batch_size=args.batch_size)
    for name, texts in (("item_embeddings.npy", list(ds.items["text"])),
                        ("user_text_embeddings.npy", user_histories(ds, HistoryWriter(ds)))):
        t0 = time.time()
        emb = embed_on_ray(args.encoder, texts, out / name, args.max_len, cfg)
        print(f"{name}: {emb.shape[0]} x {emb.shape[1]} in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
