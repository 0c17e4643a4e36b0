"""The encoder's training texts: what MLM pretraining and the rating fine-tuning read from a dataset.

Item texts and train-period reviews only (held-out reviews are the evaluation's future), each distinct text
once, capped at `EncoderConfig.max_texts` with a seeded sample. No Ray: the encoder job (cluster/train_encoder.py)
tokenises and trains on what this returns.
"""

from __future__ import annotations

import numpy as np

from prefmine.data.dataset import Dataset
from prefmine.text.encoder import EncoderConfig


def corpus(ds: Dataset, cfg: EncoderConfig) -> tuple[list[str], list[str], np.ndarray]:
    """(MLM texts, review texts with ratings, ratings): item texts and train-period reviews (held-out reviews are
    the evaluation's future), capped at cfg.max_texts."""
    rev = ds.reviews
    if "split" in rev.columns:
        rev = rev[rev["split"] == "train"]
    review_texts = [" . ".join(p for p in (s, t) if p) for s, t in zip(rev["summary"], rev["text"])]
    texts = list(dict.fromkeys(t for t in list(ds.items["text"]) + review_texts if t))  # distinct, in order
    rng = np.random.default_rng(cfg.seed)
    if len(texts) > cfg.max_texts:
        texts = [texts[i] for i in rng.choice(len(texts), cfg.max_texts, replace=False)]
    # each distinct review text once: Amazon repeats a review under every variant of a product, and a copy on
    # both sides of the rating task's held-out split would flatter its held-out error
    seen: set[str] = set()
    rated = np.zeros(len(review_texts), dtype=bool)
    for i, (t, r) in enumerate(zip(review_texts, rev["rating"].notna().to_numpy())):
        if t and r and t not in seen:
            seen.add(t)
            rated[i] = True
    rated_texts = [t for t, r in zip(review_texts, rated) if r]
    ratings = rev["rating"].to_numpy()[rated].astype(np.float32)
    if len(rated_texts) > cfg.max_texts:
        pick = rng.choice(len(rated_texts), cfg.max_texts, replace=False)
        rated_texts, ratings = [rated_texts[i] for i in pick], ratings[pick]
    return texts, rated_texts, ratings
