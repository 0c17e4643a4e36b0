"""The data side of the encoder quality benchmark: run settings, and the items and reviews every variant sees.

Items (per dataset): title + description + feature bullets as text, the most specific real category as label,
each distinct text once (the same magazine under several asins would be a free hit for every method), labels with
fewer than 2 items dropped. Reviews: the 5-core reviews of all four categories, each distinct text once, a seeded
sample split into train and test. Variants only ever train on the train part.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np

from prefmine.data.clean import clean_list, clean_text

ITEM_DATASETS = ("Magazine_Subscriptions", "Gift_Cards")
REVIEW_DATASETS = ("Magazine_Subscriptions", "Gift_Cards", "All_Beauty", "AMAZON_FASHION")
MAX_ITEM_CHARS = 2000


@dataclasses.dataclass
class Settings:
    """Sizes, seeds and training lengths of one run (written to the JSON as `config`)."""

    quick: bool = False
    seed: int = 2020
    max_reviews: int = 5000  # sampled from all 5-core reviews, then split
    test_fraction: float = 0.2
    max_items: int = 0  # per dataset; 0: every labelled item
    max_len: int = 64  # tokens, for every BERT variant (training and embedding)
    workers: int = 2  # Ray Train workers
    scratch_preset: str = "tiny"
    scratch_mlm_epochs: int = 3
    scratch_finetune_epochs: int = 2
    minilm_finetune_epochs: int = 1
    minilm_finetune_lr: float = 5e-5  # the tiny preset's 2e-4 is meant for a small BERT trained from scratch
    probe_alphas: tuple = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)

    @classmethod
    def for_run(cls, quick: bool, seed: int) -> Settings:
        if quick:
            return cls(quick=True, seed=seed, max_reviews=500, max_items=200, scratch_mlm_epochs=1,
                       scratch_finetune_epochs=1)
        return cls(seed=seed)


@dataclasses.dataclass
class ItemSet:
    """Items of one dataset: their texts and category labels."""

    texts: list[str]
    labels: np.ndarray
    duplicates: int = 0  # items dropped because their text repeats an earlier item's


@dataclasses.dataclass
class Reviews:
    """The sampled reviews and their split (index arrays into `texts`)."""

    texts: list[str]
    ratings: np.ndarray
    sources: np.ndarray
    train: np.ndarray
    test: np.ndarray
    pool: int  # distinct review texts before sampling
    duplicates: int  # reviews dropped because their text repeats an earlier review's


@dataclasses.dataclass
class Bench:
    """Everything a variant needs: the data, the settings and a scratch directory (removed after the run)."""

    settings: Settings
    items: dict[str, ItemSet]
    reviews: Reviews
    work: Path

    def train_texts(self) -> list[str]:
        return [self.reviews.texts[i] for i in self.reviews.train]


def text_key(text: str) -> str:
    """What makes two texts the same: case and spacing do not count."""
    return " ".join(text.lower().split())


def read_jsonl(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def item_text(meta: dict) -> str:
    """Title + description + feature bullets, HTML stripped; no category, no brand (they leak the label)."""
    parts = [clean_text(meta.get(field)) for field in ("title", "description", "feature")]
    return " . ".join(p for p in parts if p)[:MAX_ITEM_CHARS]


def category_label(meta: dict) -> str:
    """The most specific category entry below the root, skipping entries that are not categories.

    Gift_Cards category lists carry HTML leftovers (`</span></span></span>`) and product bullets ("Variety of
    designs for any occasion.", copies of the feature list) after the real path; those are skipped.
    """
    bullets = set(clean_list(meta.get("feature")))
    path = [clean_text(c) for c in (meta.get("category") or [])[1:]]
    path = [c for c in path if c and c not in bullets and not c.endswith(".")]
    return path[-1] if path else ""


def drop_rare(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    counts = Counter(labels)
    keep = [i for i, lab in enumerate(labels) if counts[lab] >= 2]
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_items(data: Path, name: str, max_items: int, seed: int) -> ItemSet:
    """Unique asins with text and label, each text once; labels with fewer than 2 items dropped; optionally a
    seeded sample."""
    seen, seen_text, texts, labels, duplicates = set(), set(), [], [], 0
    for meta in read_jsonl(data / "amazon2018" / name / f"meta_{name}.json.gz"):
        if meta.get("asin") in seen:
            continue
        seen.add(meta.get("asin"))
        text, label = item_text(meta), category_label(meta)
        if not (text and label):
            continue
        if text_key(text) in seen_text:
            duplicates += 1
            continue
        seen_text.add(text_key(text))
        texts.append(text)
        labels.append(label)
    texts, labels = drop_rare(texts, labels)
    if max_items and len(texts) > max_items:
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), max_items, replace=False))
        texts, labels = drop_rare([texts[i] for i in pick], [labels[i] for i in pick])
    return ItemSet(texts, np.array(labels, dtype=object), duplicates)


def review_text(review: dict) -> str:
    parts = [clean_text(review.get(field)) for field in ("summary", "reviewText")]
    return " . ".join(p for p in parts if p)


def load_reviews(data: Path, s: Settings) -> Reviews:
    """A seeded sample of `s.max_reviews` 5-core reviews with text (each distinct text once), split."""
    texts, ratings, sources, seen, duplicates = [], [], [], set(), 0
    for name in REVIEW_DATASETS:
        for r in read_jsonl(data / "amazon2018" / name / f"{name}_5.json.gz"):
            text = review_text(r)
            if not text or r.get("overall") is None:
                continue
            if text_key(text) in seen:
                duplicates += 1
                continue
            seen.add(text_key(text))
            texts.append(text)
            ratings.append(float(r["overall"]))
            sources.append(name)
    rng = np.random.default_rng(s.seed)
    pick = rng.choice(len(texts), min(s.max_reviews, len(texts)), replace=False)
    perm = rng.permutation(len(pick))
    n_test = int(round(len(pick) * s.test_fraction))
    return Reviews(texts=[texts[i] for i in pick], ratings=np.array(ratings, dtype=np.float32)[pick],
                   sources=np.array(sources)[pick], train=np.sort(perm[n_test:]), test=np.sort(perm[:n_test]),
                   pool=len(texts), duplicates=duplicates)
