"""Encoder job: WordPiece tokenizer -> MLM pretraining -> rating fine-tuning -> item embeddings.

Both training stages run through Ray Train + DeepSpeed (`cluster.ds_train`). The result is a Hugging Face BERT
directory in `<bundle>/encoder/` plus `item_embeddings.npy` (one L2-normalised row per catalogue item, in the
dataset's item order) that the ranker fuses with item IDs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertModel

from cluster.ds_train import DistConfig, train
from prefmine import config as C
from prefmine.bundle import update_manifest
from prefmine.data.dataset import Dataset, load_dataset
from prefmine.text.encoder import PRESETS, EncoderConfig, bert_config, embed_texts
from prefmine.text.tasks import MLMTask, RatingTask, tokenize
from prefmine.text.tokenizer import train_wordpiece

MIN_RATED_REVIEWS = 100


def corpus(ds: Dataset, cfg: EncoderConfig) -> tuple[list[str], list[str], np.ndarray]:
    """(MLM texts, review texts with ratings, ratings): item texts and reviews, capped at cfg.max_texts."""
    rev = ds.reviews
    review_texts = [" . ".join(p for p in (s, t) if p) for s, t in zip(rev["summary"], rev["text"])]
    texts = list(ds.items["text"]) + review_texts
    rng = np.random.default_rng(cfg.seed)
    texts = [t for t in texts if t]
    if len(texts) > cfg.max_texts:
        texts = [texts[i] for i in rng.choice(len(texts), cfg.max_texts, replace=False)]
    rated = rev["rating"].notna().to_numpy() & np.array([bool(t) for t in review_texts])
    rated_texts = [t for t, r in zip(review_texts, rated) if r]
    ratings = rev["rating"].to_numpy()[rated].astype(np.float32)
    if len(rated_texts) > cfg.max_texts:
        pick = rng.choice(len(rated_texts), cfg.max_texts, replace=False)
        rated_texts, ratings = [rated_texts[i] for i in pick], ratings[pick]
    return texts, rated_texts, ratings


def train_encoder(ds: Dataset, bundle: Path, cfg: EncoderConfig, dist: DistConfig) -> dict:
    t0 = time.time()
    out = Path(bundle) / "encoder"
    out.mkdir(parents=True, exist_ok=True)
    texts, rated_texts, ratings = corpus(ds, cfg)
    print(f"[encoder] corpus: {len(texts)} texts for MLM, {len(rated_texts)} rated reviews", flush=True)
    tokenizer = train_wordpiece(texts, cfg.vocab_size, out)
    vocab = len(tokenizer)
    special = {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id, "cls": tokenizer.cls_token_id,
               "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}
    ids, mask = tokenize(tokenizer, texts, cfg.max_len)
    storage = Path(bundle) / ".train"
    run = time.strftime("%Y%m%d-%H%M%S")
    mlm = train(MLMTask(cfg, vocab, special, ids, mask), f"encoder-mlm-{run}", storage, dist)
    state = torch.load(mlm.state_dict_path, map_location="cpu", weights_only=True)
    metrics = {"mlm": mlm.history[-1] if mlm.history else {}, "mlm_seconds": mlm.seconds}

    bert = BertModel(bert_config(cfg, vocab), add_pooling_layer=False)
    if len(rated_texts) >= MIN_RATED_REVIEWS:
        rids, rmask = tokenize(tokenizer, rated_texts, cfg.max_len)
        ft = train(RatingTask(cfg, vocab, state, rids, rmask, ratings), f"encoder-rating-{run}", storage, dist)
        state = torch.load(ft.state_dict_path, map_location="cpu", weights_only=True)
        metrics.update({"rating": ft.history[-1] if ft.history else {}, "rating_seconds": ft.seconds})
    else:
        print(f"[encoder] {len(rated_texts)} rated reviews (< {MIN_RATED_REVIEWS}): rating fine-tuning skipped",
              flush=True)
    bert.load_state_dict({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}, strict=False)
    bert.save_pretrained(str(out))
    emb = embed_texts(bert, tokenizer, list(ds.items["text"]), cfg.max_len)
    np.save(out / "item_embeddings.npy", emb.astype(np.float32))
    (out / "encoder_config.json").write_text(json.dumps({"config": C.to_dict(cfg), "vocab_size": vocab,
                                                         "max_len": cfg.max_len}, indent=2))
    metrics["seconds"] = round(time.time() - t0, 1)
    update_manifest(bundle, components={"encoder": {"config": C.to_dict(cfg), "dim": int(emb.shape[1]),
                                                    "vocab_size": vocab, "metrics": metrics}})
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the text encoder on a prepared dataset.")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", choices=C.PRESETS)
    args = p.parse_args(argv)
    ds = load_dataset(args.data, with_reviews=True)
    print(json.dumps(train_encoder(ds, Path(args.out), C.resolve(PRESETS, args.preset), DistConfig()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
