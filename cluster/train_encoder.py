"""Encoder job: initialisation -> MLM pretraining -> rating fine-tuning -> contrastive fine-tuning -> embeddings.

Initialisation is `scratch` (a WordPiece tokenizer trained on the corpus, a fresh BERT) or a verified checkpoint
(prefmine.text.checkpoint: a local directory, the pip-installed all-MiniLM-L6-v2, a hub id), whose tokenizer and
weights are used as they are; MLM then adapts it to the shop's text (`mlm_epochs: 0` skips that).

Every training stage runs through Ray Train + DeepSpeed (`cluster.ds_train`); each fine-tuning stage starts from
the previous stage's weights. The contrastive stage pairs a user's text history with the next item's text
(`prefmine.text.user_text`). The result is a Hugging Face BERT directory in `<bundle>/encoder/` plus, computed by
Ray Data batch inference (`cluster.embed_job`), `item_embeddings.npy` (one L2-normalised row per catalogue item,
in the dataset's item order) that the ranker fuses with item IDs, and `user_text_embeddings.npy` (one row per
user of the dataset, in its user order, from the user's train-period history).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import BertModel

from cluster.ds_train import DistConfig, run_storage, train
from cluster.embed_job import embed_on_ray
from prefmine import config as C
from prefmine import train_config
from prefmine.bundle import update_manifest
from prefmine.data.dataset import Dataset, load_dataset
from prefmine.storage import join, put_dir
from prefmine.text.checkpoint import load_bert_config, load_bert_state, load_tokenizer, resolve_init
from prefmine.text.config import EmbedConfig
from prefmine.text.corpus import corpus
from prefmine.text.encoder import EncoderConfig, bert_config
from prefmine.text.runtime import save_encoder
from prefmine.text.tasks import ContrastiveTask, MLMTask, RatingTask, save_adapter, tokenize
from prefmine.text.tokenizer import train_wordpiece
from prefmine.text.user_text import HistoryWriter, contrastive_pairs, user_histories

MIN_RATED_REVIEWS = 100
MIN_PAIRS = 100


def finished_stage(task, result, adapter_dir: Path) -> dict:
    """The encoder state a fine-tuning stage ends with. Under LoRA its adapters are also kept as a peft adapter
    directory (relative to the weights the stage started from) before they are merged into the weights."""
    trained = torch.load(result.state_dict_path, map_location="cpu", weights_only=True)
    if task.cfg.finetune == "lora":
        save_adapter(task, trained, adapter_dir)
    return task.encoder_state(trained)


def train_encoder(ds: Dataset, bundle: Path, cfg: EncoderConfig, dist: DistConfig,
                  embed: EmbedConfig | None = None) -> dict:
    t0 = time.time()
    out = Path(bundle) / "encoder"
    out.mkdir(parents=True, exist_ok=True)
    texts, rated_texts, ratings = corpus(ds, cfg)
    print(f"[encoder] corpus: {len(texts)} texts for MLM, {len(rated_texts)} rated reviews", flush=True)
    ckpt = resolve_init(cfg.init, cfg.init_sha256 or None)
    if ckpt is None:
        tokenizer = train_wordpiece(texts, cfg.vocab_size, out)
        bcfg, state = bert_config(cfg, len(tokenizer)), None
    else:
        print(f"[encoder] init from {ckpt.source} {ckpt.path} (sha256 {ckpt.sha256[:12]}... verified)", flush=True)
        tokenizer = load_tokenizer(ckpt)
        tokenizer.save_pretrained(str(out))
        bcfg, state = load_bert_config(ckpt), load_bert_state(ckpt)
    vocab = bcfg.vocab_size
    special = {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id, "cls": tokenizer.cls_token_id,
               "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}
    storage, record = run_storage(bundle, dist), Path(bundle) / ".train"
    run = time.strftime("%Y%m%d-%H%M%S")
    metrics = {"init": ckpt.describe() if ckpt else {"source": "scratch"}}
    if cfg.mlm_epochs > 0:
        ids, mask = tokenize(tokenizer, texts, cfg.max_len)
        mlm = train(MLMTask(cfg, bcfg, special, ids, mask, state), f"encoder-mlm-{run}", storage, dist, record)
        state = torch.load(mlm.state_dict_path, map_location="cpu", weights_only=True)
        metrics.update({"mlm": mlm.history[-1] if mlm.history else {}, "mlm_seconds": mlm.seconds,
                        "mlm_history": mlm.history})

    if len(rated_texts) >= MIN_RATED_REVIEWS and cfg.finetune_epochs > 0:
        rids, rmask = tokenize(tokenizer, rated_texts, cfg.max_len)
        task = RatingTask(cfg, bcfg, state, rids, rmask, ratings)
        probe = task.build_model()
        metrics["finetune"] = {"mode": cfg.finetune, "trainable_parameters": sum(
            p.numel() for p in probe.parameters() if p.requires_grad), "parameters": sum(
            p.numel() for p in probe.parameters())}
        ft = train(task, f"encoder-rating-{run}", storage, dist, record)
        state = finished_stage(task, ft, out / "lora" / "rating")
        metrics.update({"rating": ft.history[-1] if ft.history else {}, "rating_seconds": ft.seconds,
                        "rating_history": ft.history})
    else:
        print(f"[encoder] {len(rated_texts)} rated reviews (< {MIN_RATED_REVIEWS}) or finetune_epochs 0: "
              "rating fine-tuning skipped", flush=True)

    writer = HistoryWriter(ds, cfg.history_items, cfg.history_item_words)
    queries, targets, target_items = contrastive_pairs(ds, writer, cfg.pairs_per_user, cfg.max_texts, cfg.seed)
    if len(queries) >= MIN_PAIRS and cfg.contrastive_epochs > 0:
        q_ids, q_mask = tokenize(tokenizer, queries, cfg.max_len)
        d_ids, d_mask = tokenize(tokenizer, targets, cfg.max_len)
        task = ContrastiveTask(cfg, bcfg, state, q_ids, q_mask, d_ids, d_mask, target_items)
        ct = train(task, f"encoder-contrastive-{run}", storage, dist, record)
        state = finished_stage(task, ct, out / "lora" / "contrastive")
        metrics.update({"contrastive": ct.history[-1] if ct.history else {}, "contrastive_pairs": len(queries),
                        "contrastive_seconds": ct.seconds, "contrastive_history": ct.history})
    else:
        print(f"[encoder] {len(queries)} history/next-item pairs (< {MIN_PAIRS}) or contrastive_epochs 0: "
              "contrastive fine-tuning skipped", flush=True)

    bert = BertModel(bcfg, add_pooling_layer=False)
    if state is not None:
        bert.load_state_dict({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}, strict=False)
    save_encoder(out, bert, cfg)
    t_embed = time.time()
    source = out
    if dist.storage:  # the embedding actors read the encoder from the store, not from this node's disk
        source = join(dist.storage, "encoder", run)
        put_dir(out, source)
    emb = embed_on_ray(source, list(ds.items["text"]), out / "item_embeddings.npy", cfg.max_len, embed or EmbedConfig())
    users = embed_on_ray(source, user_histories(ds, writer), out / "user_text_embeddings.npy", cfg.max_len,
                         embed or EmbedConfig())
    metrics["embedding"] = {"items": int(emb.shape[0]), "users": int(users.shape[0]),
                            "seconds": round(time.time() - t_embed, 1)}
    metrics["seconds"] = round(time.time() - t0, 1)
    summary = {k: v for k, v in metrics.items() if not k.endswith("_history")}
    update_manifest(bundle, components={"encoder": {"config": C.to_dict(cfg), "dim": int(emb.shape[1]),
                                                    "vocab_size": vocab, "metrics": summary}})
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the text encoder on a prepared dataset.")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree (prefmine.train_config)")
    args = p.parse_args(argv)
    tree = train_config.load(args.preset, args.config)
    ds = load_dataset(args.data, with_reviews=True)
    print(json.dumps(train_encoder(ds, Path(args.out), tree.encoder, tree.dist, tree.embed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
