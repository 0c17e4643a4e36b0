"""Benchmark: quality of the text encoder's representations against a TF-IDF baseline, on real Amazon data.

Throughput benchmarks say how fast the encoder trains; this one says whether what it learns is worth having.
Every variant turns texts into vectors, and two measurements judge the vectors, in one run:

1. Same-category precision@10 of item neighbours (Magazine_Subscriptions and Gift_Cards metadata, per
   dataset). Item text = title + description + feature bullets (HTML stripped); neither the category field
   nor the brand is in the text, so the label cannot leak. Label = the most specific category entry (the last
   one after the root), ignoring entries that are not categories: HTML leftovers, product bullets copied into
   the category list (an entry that is also one of the item's feature bullets or that ends with a full stop).
   Items without text or label, items whose text repeats an earlier item's (the same magazine under several
   asins: a free hit for every method), and labels with fewer than 2 items, are dropped. For each item, its
   10 nearest items by cosine (itself excluded) within its own dataset; precision = share of them with the
   item's label, averaged over items. Baseline: the expected precision of random neighbours (from the label
   frequencies).
2. Rating prediction from review text: the 5-core reviews of all four categories (summary . reviewText), each
   distinct text once (the 5-core files repeat one review under every variant of a product: 13,792 reviews,
   5,645 distinct texts, so without this most test reviews also sit in train), a seeded sample, split 80/20.
   A linear probe (ridge, its alpha chosen on the train part by generalised cross-validation) on frozen
   vectors, predictions clipped to [1, 5]: MAE and accuracy (rounded prediction == rating). Variants that
   fine-tune a rating head also report that head's own predictions. Baselines: the constant train mean and
   the train majority rating.

Variants: `tfidf` (the baseline: L2-normalised TF-IDF), `scratch` (a tiny BERT trained here: WordPiece
tokenizer, MLM pretraining, rating fine-tuning), `minilm` (all-MiniLM-L6-v2, frozen) and `minilm_rating`
(MiniLM fully fine-tuned on review -> rating). Training runs through Ray Train + DeepSpeed
(`cluster.ds_train`, 2 CPU workers) exactly like `cluster/train_encoder.py`, and only ever sees the train part
of the reviews (the MLM corpus is the item texts plus the train reviews). `seconds` per variant is the wall
time of producing its vectors (training included, evaluation not).

    python -m bench.encoder_quality [--out RESULT.json] [--quick] [--plan] [--data DIR] [--variants ...]

About 22 minutes on 2 busy cores (MiniLM's forward and backward passes dominate; each of the three Ray Train
runs also spends about a minute starting); `--quick` (200 items per dataset, 500 reviews, 1 epoch) is a smoke
test of about 6 minutes, mostly those start-ups.

A new variant is one function `f(bench: Bench) -> (item_vectors_by_dataset, review_vectors)` registered in
VARIANTS; vectors are numpy arrays or scipy sparse matrices, one row per `bench.items[name].texts` and per
`bench.reviews.texts`. It may also return a third element, `{name: predicted ratings of the test reviews}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.common import add_common, data_root, default_out, print_plan, require
from bench.data_scale import machine
from prefmine.data.clean import clean_list, clean_text

ROOT = Path(__file__).resolve().parents[1]
ITEM_DATASETS = ("Magazine_Subscriptions", "Gift_Cards")
REVIEW_DATASETS = ("Magazine_Subscriptions", "Gift_Cards", "All_Beauty", "AMAZON_FASHION")
K = 10
MAX_ITEM_CHARS = 2000


# --------------------------------------------------------------------------------------------------- settings

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


# ------------------------------------------------------------------------------------------------------- data

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


# ---------------------------------------------------------------------------------------------------- metrics

def normalise(x):
    """Rows scaled to unit L2 norm (dense or sparse; all-zero rows stay zero)."""
    from sklearn.preprocessing import normalize

    return normalize(x)


def neighbour_precision(vectors, labels: np.ndarray, k: int = K) -> float:
    """Mean share of each item's k cosine-nearest other items that have its label."""
    x = normalise(vectors)
    sim = x @ x.T
    sim = sim.toarray() if hasattr(sim, "toarray") else np.asarray(sim)
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    return float((labels[top] == labels[:, None]).mean())


def random_precision(labels: np.ndarray) -> float:
    """Expected precision of neighbours drawn at random: sum_l n_l (n_l - 1) / (N (N - 1))."""
    n = np.array(list(Counter(labels).values()), dtype=np.float64)
    return float((n * (n - 1)).sum() / (n.sum() * (n.sum() - 1)))


def rating_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """MAE, and accuracy of the prediction rounded half up."""
    return {"mae": round(float(np.abs(pred - truth).mean()), 4),
            "accuracy": round(float((np.floor(pred + 0.5) == truth).mean()), 4)}


def linear_probe(vectors, r: Reviews, alphas) -> tuple[np.ndarray, float]:
    """Ridge on the train reviews' vectors (alpha by generalised cross-validation); clipped predictions."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=alphas).fit(vectors[r.train], r.ratings[r.train])
    return np.clip(model.predict(vectors[r.test]), 1.0, 5.0), float(model.alpha_)


def baselines(b: Bench) -> dict:
    train, test = b.reviews.ratings[b.reviews.train], b.reviews.ratings[b.reviews.test]
    majority = Counter(train.tolist()).most_common(1)[0][0]
    mean = rating_scores(np.full_like(test, train.mean()), test)
    major = rating_scores(np.full_like(test, majority), test)
    random = {n: round(random_precision(s.labels), 4) for n, s in b.items.items()}
    return {"random_category_precision@10": random,
            "mean_rating_mae": mean["mae"], "mean_rating_accuracy": mean["accuracy"],
            "majority_rating_mae": major["mae"], "majority_rating_accuracy": major["accuracy"],
            "train_mean_rating": round(float(train.mean()), 4), "train_majority_rating": majority}


class VariantOutput(NamedTuple):
    items: dict[str, Any]  # dataset -> vectors, one row per item
    reviews: Any  # vectors, one row per review (train and test)
    predictions: dict | None = None  # name -> predicted ratings of the test reviews
    info: dict | None = None  # training facts for the JSON


def evaluate(b: Bench, out: VariantOutput) -> dict:
    """Both measurements for one variant's vectors."""
    cat = {n: round(neighbour_precision(out.items[n], s.labels), 4) for n, s in b.items.items()}
    pred, alpha = linear_probe(out.reviews, b.reviews, b.settings.probe_alphas)
    truth = b.reviews.ratings[b.reviews.test]
    rating = {f"probe_{k}": v for k, v in rating_scores(pred, truth).items()}
    rating["probe_alpha"] = alpha
    for name, p in (out.predictions or {}).items():
        rating.update({f"{name}_{k}": v for k, v in rating_scores(np.asarray(p), truth).items()})
    result = {"category_precision@10": cat, "rating": rating}
    if out.info:
        result["info"] = out.info
    return result


# --------------------------------------------------------------------------------------------------- variants

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


# ------------------------------------------------------------------------------------------------------- main

def table(result: dict) -> str:
    """A compact text table of the results and baselines."""
    names = list(result["datasets"])
    head = (["variant"] + [f"P@10 {n[:12]}" for n in names]
            + ["probe MAE", "probe acc", "head MAE", "head acc", "seconds"])
    rows = [head]
    for variant, r in result["results"].items():
        rt = r["rating"]
        rows.append([variant] + [f"{r['category_precision@10'][n]:.3f}" for n in names] +
                    [f"{rt['probe_mae']:.3f}", f"{rt['probe_accuracy']:.3f}",
                     f"{rt['finetuned_head_mae']:.3f}" if "finetuned_head_mae" in rt else "-",
                     f"{rt['finetuned_head_accuracy']:.3f}" if "finetuned_head_accuracy" in rt else "-",
                     f"{r['seconds']:.0f}"])
    base = result["baselines"]
    rows.append(["random / mean"] + [f"{base['random_category_precision@10'][n]:.3f}" for n in names] +
                [f"{base['mean_rating_mae']:.3f}", f"{base['mean_rating_accuracy']:.3f}", "-", "-", "-"])
    rows.append(["majority"] + ["-" for _ in names] +
                [f"{base['majority_rating_mae']:.3f}", f"{base['majority_rating_accuracy']:.3f}"] + ["-"] * 3)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines)


def describe(b: Bench, data: Path) -> dict:
    """The `config`, `datasets` and `reviews` parts of the result."""
    import sklearn

    r = b.reviews
    config = {**dataclasses.asdict(b.settings), "data": str(data), "k": K,
              "item_datasets": list(ITEM_DATASETS), "review_datasets": list(REVIEW_DATASETS),
              "item_text": "title . description . feature (HTML stripped; no category, no brand); "
                           "each distinct text once",
              "review_text": "summary . reviewText; each distinct text once",
              "label": "last category entry below the root that is not HTML or a product bullet",
              "tfidf": "sublinear tf, min_df 2, 1-2 grams, L2",
              "probe": "sklearn RidgeCV (GCV), clipped to [1, 5]", "sklearn": sklearn.__version__}
    datasets = {n: {"items": len(s.texts), "labels": len(set(s.labels)),
                    "duplicate_texts_dropped": s.duplicates} for n, s in b.items.items()}
    test_counts = Counter(r.ratings[r.test].tolist())
    reviews = {"train": len(r.train), "test": len(r.test), "pool": r.pool,
               "duplicate_texts_dropped": r.duplicates, "by_dataset": dict(Counter(r.sources.tolist())),
               "test_rating_counts": {str(int(k)): v for k, v in sorted(test_counts.items())}}
    return {"config": config, "datasets": datasets, "reviews": reviews}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "encoder_quality")
    ap.add_argument("--quick", action="store_true",
                    help="200 items per dataset, 500 reviews, 1 epoch per stage (a smoke test)")
    ap.add_argument("--data", default=str(data_root()),
                    help="folder laid out like ../shared/data (default: $PREFMINE_DATA_DIR, else that)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=2020)
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray of known size, not a cluster someone else is using
    data, out = Path(a.data), Path(a.out) if a.out else default_out("encoder_quality", a.quick)
    s = Settings.for_run(a.quick, a.seed)
    inputs = [data / "amazon2018" / n / f"meta_{n}.json.gz" for n in ITEM_DATASETS]
    inputs += [data / "amazon2018" / n / f"{n}_5.json.gz" for n in REVIEW_DATASETS]
    require(inputs)
    if a.plan:
        return print_plan("encoder_quality", inputs=inputs, out=out, variants=a.variants,
                          settings=dataclasses.asdict(s))
    work = Path(tempfile.mkdtemp(prefix="prefmine-bench-quality-"))
    items = {n: load_items(data, n, s.max_items, s.seed) for n in ITEM_DATASETS}
    b = Bench(s, items, load_reviews(data, s), work)
    result = {"bench": "encoder_quality", "machine": machine(), **describe(b, data), "results": {},
              "baselines": baselines(b)}
    print(json.dumps({k: result[k] for k in ("datasets", "reviews")}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in a.variants:
            t = time.perf_counter()
            vectors = VariantOutput(*VARIANTS[name](b))
            seconds = time.perf_counter() - t
            result["results"][name] = {**evaluate(b, vectors), "seconds": round(seconds, 1)}
            print(f"[encoder_quality] {name}: {json.dumps(result['results'][name])}", flush=True)
            out.write_text(json.dumps(result, indent=2))  # after every variant: a late failure keeps the rest
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
