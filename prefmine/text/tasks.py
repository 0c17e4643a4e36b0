"""Encoder training tasks for `cluster/ds_train.py`: MLM pretraining, review-rating fine-tuning and contrastive
fine-tuning (user history text vs next item text).

Texts are tokenised once in the driver into fixed-length id arrays, so workers need neither the tokenizer nor the
raw text. MLM masking is drawn per batch from a seed shared by epoch, step and rank (reproducible runs): 15% of
real tokens are selected; of those 80% become [MASK], 10% a random token, 10% stay.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from prefmine.text.encoder import EncoderConfig, RatingModel, TextMatcher
from prefmine.train_task import shard_order, steps_for


def tokenize(tokenizer, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer([t or "" for t in texts], padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def split_holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(n * frac)) if n > 10 else 0
    return perm[k:], perm[:k]


def _on(model, *arrays) -> list[torch.Tensor]:
    """numpy arrays as tensors on the model's device (evaluation runs on the worker's GPU when it has one)."""
    dev = next(model.parameters()).device
    return [torch.from_numpy(a).to(dev) for a in arrays]


def _as_dict(bert_cfg) -> dict:
    """Tasks travel to Ray workers by pickle; a plain dict survives that where a config object loaded
    from a checkpoint does not always keep its class identity."""
    return bert_cfg.to_dict() if hasattr(bert_cfg, "to_dict") else dict(bert_cfg)


def _load_bert(model, init_state: dict | None):
    """Load `bert.`-prefixed encoder weights into `model`; a clear error when any encoder weight is missing."""
    if not init_state:
        return model
    missing, _ = model.load_state_dict({k: v for k, v in init_state.items() if k.startswith("bert.")}, strict=False)
    missing = [k for k in missing if k.startswith("bert.") and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"initial encoder state is missing {missing[:3]}...")
    return model


class MLMTask:
    """Masked-language-model pretraining (from scratch, or continued from a checkpoint's encoder weights)."""

    def __init__(self, cfg: EncoderConfig, bert_cfg, special: dict, ids: np.ndarray, mask: np.ndarray,
                 init_state: dict | None = None):
        self.cfg, self.bert_cfg, self.special, self.init_state = cfg, _as_dict(bert_cfg), special, init_state
        self.vocab_size = self.bert_cfg["vocab_size"]
        # random replacements never draw a special token (a pretrained vocabulary's specials need not be 0-4)
        self.plain_ids = np.setdiff1d(np.arange(self.vocab_size), list(special.values()))
        self.epochs, self.batch_size, self.lr = cfg.mlm_epochs, cfg.batch_size, cfg.lr
        self.weight_decay, self.seed = cfg.weight_decay, cfg.seed
        train, hold = split_holdout(len(ids), 0.05, cfg.seed)
        self.ids, self.mask = ids[train], mask[train]
        self.hold_ids, self.hold_mask = ids[hold], mask[hold]

    def build_model(self):
        return _load_bert(BertForMaskedLM(BertConfig.from_dict(self.bert_cfg)), self.init_state)

    def steps_per_epoch(self, world_size):
        return steps_for(len(self.ids), self.batch_size, world_size)

    def _masked(self, ids, mask, rng):
        ids = ids.copy()
        labels = np.full_like(ids, -100)
        special = np.isin(ids, list(self.special.values())) | (mask == 0)
        pick = (rng.random(ids.shape) < self.cfg.mlm_probability) & ~special
        labels[pick] = ids[pick]
        roll = rng.random(ids.shape)
        ids[pick & (roll < 0.8)] = self.special["mask"]
        rand = pick & (roll >= 0.8) & (roll < 0.9)
        ids[rand] = rng.choice(self.plain_ids, size=int(rand.sum()))
        return ids, labels

    def batches(self, epoch, rank, world_size):
        for step, idx in enumerate(shard_order(len(self.ids), self.batch_size, epoch, rank, world_size, self.seed)):
            rng = np.random.default_rng([self.seed, epoch, step, rank])
            ids, labels = self._masked(self.ids[idx], self.mask[idx], rng)
            yield {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(self.mask[idx]),
                   "labels": torch.from_numpy(labels)}

    def loss(self, model, batch):
        return model(**batch).loss

    def evaluate(self, model) -> dict:
        if not len(self.hold_ids):
            return {}
        model.eval()
        rng = np.random.default_rng([self.seed, 999])
        ids, labels = self._masked(self.hold_ids, self.hold_mask, rng)
        ids, mask, labels = _on(model, ids, self.hold_mask, labels)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        return {"heldout_mlm_loss": float(out.loss)}


def with_lora(bert, cfg: EncoderConfig):
    """Wrap a BertModel with peft LoRA adapters on `cfg.lora_targets`; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(bert, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                           target_modules=list(cfg.lora_targets), bias="none"))


def finetune_model(task, wrap):
    """A fine-tuning model: a BERT (the task's config) wrapped by `wrap` (adds the objective's head), loaded with
    the task's initial encoder weights, under LoRA with adapters on the configured projections."""
    bert = BertModel(BertConfig.from_dict(task.bert_cfg), add_pooling_layer=False)
    model = _load_bert(wrap(bert), task.init_state)
    if task.cfg.finetune == "lora":
        model.bert = with_lora(model.bert, task.cfg)
    return model


def merged_state(task, state: dict) -> dict:
    """A fine-tuning task's trained state with plain `bert.` keys: under LoRA the adapters are merged into the
    base weights (a regular BERT for serving); under full fine-tuning the state as it is."""
    if task.cfg.finetune != "lora":
        return state
    model = task.build_model()
    model.load_state_dict(state)
    model.bert = model.bert.merge_and_unload()
    return model.state_dict()


def save_adapter(task, state: dict, path) -> None:
    """Write a LoRA task's trained adapters as a peft adapter directory (adapter_config.json + weights), to be
    applied with `PeftModel.from_pretrained` on the weights the stage started from."""
    model = task.build_model()
    model.load_state_dict(state)
    model.bert.save_pretrained(str(path))


class RatingTask:
    """Fine-tune the MLM-pretrained encoder to predict a review's rating from its text."""

    def __init__(self, cfg: EncoderConfig, bert_cfg, init_state: dict, ids, mask, ratings):
        self.cfg, self.bert_cfg, self.init_state = cfg, _as_dict(bert_cfg), init_state
        self.epochs, self.batch_size, self.lr = cfg.finetune_epochs, cfg.batch_size, cfg.finetune_lr
        self.weight_decay, self.seed = cfg.weight_decay, cfg.seed
        ratings = np.asarray(ratings, dtype=np.float32)
        train, hold = split_holdout(len(ids), 0.1, cfg.seed)
        self.mean, self.std = float(ratings[train].mean()), float(ratings[train].std() + 1e-6)
        self.low, self.high = float(ratings[train].min()), float(ratings[train].max())
        z = (ratings - self.mean) / self.std
        self.ids, self.mask, self.z = ids[train], mask[train], z[train]
        self.hold_ids, self.hold_mask, self.hold_r = ids[hold], mask[hold], ratings[hold]

    def build_model(self):
        return finetune_model(self, RatingModel)

    def encoder_state(self, state: dict) -> dict:
        """The trained `bert.`-prefixed encoder weights (LoRA adapters merged into the base weights) and head."""
        return merged_state(self, state)

    def steps_per_epoch(self, world_size):
        return steps_for(len(self.ids), self.batch_size, world_size)

    def batches(self, epoch, rank, world_size):
        for idx in shard_order(len(self.ids), self.batch_size, epoch, rank, world_size, self.seed):
            yield {"input_ids": torch.from_numpy(self.ids[idx]), "attention_mask": torch.from_numpy(self.mask[idx]),
                   "target": torch.from_numpy(self.z[idx])}

    def loss(self, model, batch):
        return model(**batch)

    def evaluate(self, model) -> dict:
        if not len(self.hold_ids):
            return {}
        model.eval()
        pred = model(*_on(model, self.hold_ids, self.hold_mask)).float().cpu().numpy()
        pred = np.clip(pred * self.std + self.mean, self.low, self.high)  # the train ratings' range
        return {"heldout_rating_mae": float(np.abs(pred - self.hold_r).mean()),
                "heldout_mean_baseline_mae": float(np.abs(self.mean - self.hold_r).mean())}


class ContrastiveTask:
    """Contrastive fine-tuning: a user's text history (query) against the text of the next item they chose
    (document), the batch's other documents as negatives (`TextMatcher`). Each rank's batch is its own negative set.

    Held out: 10% of the pairs (at most 512) are scored by retrieval among the held-out pairs' distinct items:
    recall@10 and MRR of the true next item, beside the recall@10 of a random ranking.
    """

    def __init__(self, cfg: EncoderConfig, bert_cfg, init_state: dict | None, q_ids, q_mask, d_ids, d_mask, d_item):
        self.cfg, self.bert_cfg, self.init_state = cfg, _as_dict(bert_cfg), init_state
        self.epochs, self.batch_size, self.lr = cfg.contrastive_epochs, cfg.batch_size, cfg.finetune_lr
        self.weight_decay, self.seed = cfg.weight_decay, cfg.seed
        train, hold = split_holdout(len(q_ids), 0.1, cfg.seed)
        hold = hold[:512]
        self.q_ids, self.q_mask, self.d_ids, self.d_mask, self.d_item = (
            a[train] for a in (q_ids, q_mask, d_ids, d_mask, d_item))
        self.hold = tuple(a[hold] for a in (q_ids, q_mask, d_ids, d_mask, d_item))

    def build_model(self):
        return finetune_model(self, lambda bert: TextMatcher(bert, self.cfg.temperature))

    def encoder_state(self, state: dict) -> dict:
        return merged_state(self, state)

    def steps_per_epoch(self, world_size):
        return steps_for(len(self.q_ids), self.batch_size, world_size)

    def batches(self, epoch, rank, world_size):
        for idx in shard_order(len(self.q_ids), self.batch_size, epoch, rank, world_size, self.seed):
            yield {"q_ids": torch.from_numpy(self.q_ids[idx]), "q_mask": torch.from_numpy(self.q_mask[idx]),
                   "d_ids": torch.from_numpy(self.d_ids[idx]), "d_mask": torch.from_numpy(self.d_mask[idx]),
                   "d_item": torch.from_numpy(self.d_item[idx])}

    def loss(self, model, batch):
        return model(**batch)

    def evaluate(self, model) -> dict:
        q_ids, q_mask, d_ids, d_mask, d_item = self.hold
        if len(q_ids) < 2:
            return {}
        model.eval()
        items, first = np.unique(d_item, return_index=True)
        q = model.encode(*_on(model, q_ids, q_mask))
        d = model.encode(*_on(model, d_ids[first], d_mask[first]))
        scores = (q @ d.T).float().cpu().numpy()
        truth = np.searchsorted(items, d_item)
        rank = (scores > scores[np.arange(len(q_ids)), truth][:, None]).sum(1)  # 0 = first
        k = min(10, len(items))
        return {"heldout_recall@10": float((rank < 10).mean()), "heldout_mrr": float((1.0 / (rank + 1)).mean()),
                "heldout_random_recall@10": k / len(items), "heldout_candidates": float(len(items))}
