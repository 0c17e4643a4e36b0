"""The two measurements of the encoder quality benchmark and their baselines, for any variant's vectors.

Same-category precision@10 of item neighbours (cosine, within a dataset; baseline: random neighbours from the
label frequencies) and rating prediction from review text (a ridge probe on frozen vectors, alpha by generalised
cross-validation; baselines: the train mean and the train majority rating), plus a fine-tuned head's own
predictions when a variant has one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from bench.encoder_eval.data import Bench, Reviews

K = 10


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
