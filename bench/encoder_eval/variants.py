"""The variants of the encoder quality benchmark: each turns the item and review texts into vectors.

`tfidf` (the baseline), `scratch` (a tiny BERT trained here: WordPiece tokenizer, MLM pretraining, rating
fine-tuning), `minilm` (all-MiniLM-L6-v2, frozen) and `minilm_rating` (MiniLM fully fine-tuned on review ->
rating). Training runs through Ray Train + DeepSpeed (`cluster.ds_train`) exactly like cluster/train_encoder.py.

A new variant is one function `f(bench: Bench) -> (item_vectors_by_dataset, review_vectors)` registered in
VARIANTS; vectors are numpy arrays or scipy sparse matrices, one row per `bench.items[name].texts` and per
`bench.reviews.texts`. It may also return a third element, `{name: predicted ratings of the test reviews}`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from bench.encoder_eval.data import Bench
from bench.encoder_eval.metrics import VariantOutput


def tfidf_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), strip_accents="unicode")


def tfidf_variant(b: Bench) -> VariantOutput:
    """TF-IDF fitted per item dataset, and on the train reviews only for the reviews."""
    items = {n: tfidf_vectorizer().fit_transform(s.texts) for n, s in b.items.items()}
    reviews = tfidf_vectorizer().fit(b.train_texts()).transform(b.reviews.texts)
    return VariantOutput(items, reviews)


def embed(bert, tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """`embed_texts` (length-bucketed batches, returned in the input order)."""
    from prefmine.text.encoder import embed_texts

    return embed_texts(bert, tokenizer, texts, max_len)


def embed_all(b: Bench, bert, tokenizer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    items = {n: embed(bert, tokenizer, s.texts, b.settings.max_len) for n, s in b.items.items()}
    return items, embed(bert, tokenizer, b.reviews.texts, b.settings.max_len)


def bert_from_state(bert_cfg, state: dict):
    """A BertModel holding the `bert.`-prefixed weights of a training state (as cluster/train_encoder.py)."""
    from transformers import BertModel

    bert = BertModel(bert_cfg, add_pooling_layer=False)
    encoder = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    missing, _ = bert.load_state_dict(encoder, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"encoder state lacks {missing[:3]}...")
    return bert


def run_training(b: Bench, task, name: str) -> tuple[dict, dict]:
    """Train `task` through Ray Train + DeepSpeed; (final fp32 state, summary of the run)."""
    import torch

    from cluster.ds_train import DistConfig, train
    from cluster.ray_env import ensure_ray

    ensure_ray(num_cpus=b.settings.workers, dashboard=False)
    result = train(task, f"bench-quality-{name}", b.work / "ray",
                   DistConfig(num_workers=b.settings.workers, log_every=50))
    state = torch.load(result.state_dict_path, map_location="cpu", weights_only=True)
    last = result.history[-1] if result.history else {}
    return state, {"seconds": result.seconds, "epochs": len(result.history), **last}


def finetune_rating(b: Bench, name: str, cfg, bert_cfg, tokenizer, state: dict | None):
    """RatingTask on the train reviews only; (task, its trained state, summary of the run)."""
    from prefmine.text.tasks import RatingTask, tokenize

    ids, mask = tokenize(tokenizer, b.train_texts(), cfg.max_len)
    task = RatingTask(cfg, bert_cfg, state, ids, mask, b.reviews.ratings[b.reviews.train])
    trained, summary = run_training(b, task, f"{name}-rating")
    return task, task.encoder_state(trained), summary


def head_predictions(b: Bench, task, bert_cfg, state: dict, tokenizer, batch_size: int = 128) -> np.ndarray:
    """The fine-tuned rating head's predictions of the test reviews, on the rating scale, in [1, 5]."""
    import torch

    from prefmine.text.encoder import RatingModel
    from prefmine.text.tasks import tokenize

    model = RatingModel(bert_from_state(bert_cfg, state))
    model.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    model.eval()
    ids, mask = tokenize(tokenizer, [b.reviews.texts[i] for i in b.reviews.test], b.settings.max_len)
    with torch.no_grad():
        z = np.concatenate([model.predict(torch.from_numpy(ids[i:i + batch_size]),
                                          torch.from_numpy(mask[i:i + batch_size])).numpy()
                            for i in range(0, len(ids), batch_size)])
    return np.clip(z * task.std + task.mean, 1.0, 5.0)


def special_ids(tokenizer) -> dict:
    return {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id, "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}


def scratch_variant(b: Bench) -> VariantOutput:
    """Tiny BERT from scratch: WordPiece on item texts + train reviews, MLM on them, rating fine-tuning."""
    from prefmine.text.encoder import bert_config
    from prefmine.text.tasks import MLMTask, tokenize
    from prefmine.text.tokenizer import train_wordpiece
    from prefmine.train_config import preset

    s = b.settings
    cfg = dataclasses.replace(preset(s.scratch_preset).encoder, max_len=s.max_len, seed=s.seed,
                              mlm_epochs=s.scratch_mlm_epochs, finetune_epochs=s.scratch_finetune_epochs)
    corpus = [t for items in b.items.values() for t in items.texts] + b.train_texts()
    tokenizer = train_wordpiece(corpus, cfg.vocab_size, b.work / "scratch-tokenizer")
    bert_cfg = bert_config(cfg, len(tokenizer))
    ids, mask = tokenize(tokenizer, corpus, cfg.max_len)
    state, mlm = run_training(b, MLMTask(cfg, bert_cfg, special_ids(tokenizer), ids, mask), "scratch-mlm")
    task, state, rating = finetune_rating(b, "scratch", cfg, bert_cfg, tokenizer, state)
    items, reviews = embed_all(b, bert_from_state(bert_cfg, state), tokenizer)
    head = head_predictions(b, task, bert_cfg, state, tokenizer)
    info = {"vocab_size": len(tokenizer), "mlm_corpus": len(corpus), "mlm": mlm, "rating": rating}
    return VariantOutput(items, reviews, {"finetuned_head": head}, info)


@functools.lru_cache(maxsize=1)
def minilm():
    """(tokenizer, BertConfig, `bert.`-prefixed state) of the pip-installed, hash-checked all-MiniLM-L6-v2."""
    from prefmine.text.checkpoint import load_bert_config, load_bert_state, load_tokenizer, resolve_init

    ckpt = resolve_init("minilm")
    return load_tokenizer(ckpt), load_bert_config(ckpt), load_bert_state(ckpt)


def minilm_variant(b: Bench) -> VariantOutput:
    """all-MiniLM-L6-v2 as it is (mean-pooled, frozen)."""
    tokenizer, bert_cfg, state = minilm()
    return VariantOutput(*embed_all(b, bert_from_state(bert_cfg, state), tokenizer))


def minilm_rating_variant(b: Bench) -> VariantOutput:
    """MiniLM fully fine-tuned on the train reviews -> rating (RatingTask), then embedding with it."""
    from prefmine.train_config import preset

    s = b.settings
    tokenizer, bert_cfg, state = minilm()
    cfg = dataclasses.replace(preset("tiny").encoder, max_len=s.max_len, seed=s.seed,
                              finetune_epochs=s.minilm_finetune_epochs, finetune_lr=s.minilm_finetune_lr)
    task, state, rating = finetune_rating(b, "minilm", cfg, bert_cfg, tokenizer, state)
    items, reviews = embed_all(b, bert_from_state(bert_cfg, state), tokenizer)
    head = head_predictions(b, task, bert_cfg, state, tokenizer)
    return VariantOutput(items, reviews, {"finetuned_head": head}, {"rating": rating})


VARIANTS = {
    "tfidf": tfidf_variant,
    "scratch": scratch_variant,
    "minilm": minilm_variant,
    "minilm_rating": minilm_rating_variant,
}
