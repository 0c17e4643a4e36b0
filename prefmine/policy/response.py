"""User response model for the policy simulator, fitted to logged data and held out from the ranker.

Why a separate model: if the simulator's users clicked on whatever the ranker scores highest, the greedy
ranker policy would be optimal by construction and RL would only learn to copy it. The response model is
therefore built from different evidence than the ranker: item-item co-occurrence and popularity from the
train interactions, never the ranker's vectors.

Model (all features computed from train interactions only):

    f1 = mean_h  cos_cooc(c, h)      mean co-occurrence cosine between candidate c and history items h
    f2 = max_h   cos_cooc(c, h)      strongest single co-occurrence link
    f3 = log(1 + train count of c)   popularity
    (features standardised with the training mean/std)

    p_attract(c | H)     = sigmoid(w . f + b + logit_offset)
    p_click(c | H, pos)  = p_attract * 1 / log2(pos + 2)          (position-based examination model)
    p_buy(c | click)     = smoothed share of ratings >= 4 for c    (Beta prior around the global share)

cos_cooc is the cosine between item columns of the (user x item) train matrix, with each row scaled by
1/sqrt(len(history)), and approximated through a rank-r factorisation E (top-r eigenvectors of the item-item
matrix; randomized SVD above 6,000 items) (item co-embeddings, E_i . E_j ~=
cos_cooc(i, j)) so that it scales to large catalogues and pickles as a plain numpy array.

Training data: one positive per user = (train history, the user's real next item, the validation item), and
`n_neg` negatives = random catalogue items outside the user's history. Logistic regression with L2 by full-batch
gradient descent in numpy. The logged data has no display positions, so position enters only through the
fixed examination factor. `auc(...)` checks that the fitted model ranks real next items above random ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

FEATURES = ("cooc_mean", "cooc_max", "log_pop")


@dataclass
class ResponseModel:
    """Fitted response-model parameters (plain numpy: pickles into RLlib env runners)."""

    item_emb: np.ndarray  # [I, r] co-occurrence embeddings; E_i . E_j ~= cosine co-occurrence
    log_pop: np.ndarray  # [I] log(1 + train count)
    buy_prob: np.ndarray  # [I] P(purchase | click)
    weights: np.ndarray  # [len(FEATURES)]
    bias: float
    feat_mean: np.ndarray  # [len(FEATURES)]
    feat_std: np.ndarray  # [len(FEATURES)]
    logit_offset: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    def features(self, history: np.ndarray, cands: np.ndarray) -> np.ndarray:
        """Raw (unstandardised) features [len(cands), 3] for candidates given one user's history."""
        cands = np.asarray(cands, dtype=np.int64)
        history = np.asarray(history, dtype=np.int64)
        out = np.zeros((len(cands), len(FEATURES)), dtype=np.float64)
        if len(history):
            sims = self.item_emb[cands] @ self.item_emb[history].T  # [n, |H|]
            out[:, 0] = sims.mean(axis=1)
            out[:, 1] = sims.max(axis=1)
        out[:, 2] = self.log_pop[cands]
        return out

    def attraction(self, history: np.ndarray, cands: np.ndarray) -> np.ndarray:
        """P(the user is attracted to c | examined), before position and fatigue."""
        z = (self.features(history, cands) - self.feat_mean) / self.feat_std
        return _sigmoid(z @ self.weights + self.bias + self.logit_offset)

    def click_prob(self, history: np.ndarray, cands: np.ndarray, position: int | np.ndarray) -> np.ndarray:
        return self.attraction(history, cands) * position_bias(position)


def position_bias(position: int | np.ndarray) -> np.ndarray:
    """Examination probability of display position `position` (0-based): 1 / log2(pos + 2)."""
    return 1.0 / np.log2(np.asarray(position, dtype=np.float64) + 2.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def cooc_embeddings(train_seqs: list[np.ndarray], n_items: int, rank: int = 64, seed: int = 0) -> np.ndarray:
    """Item co-embeddings E [n_items, r] with E_i . E_j ~= cosine between items' user columns."""
    rows, cols, vals = [], [], []
    for u, seq in enumerate(train_seqs):
        items = np.unique(np.asarray(seq, dtype=np.int64))
        if len(items) == 0:
            continue
        rows.append(np.full(len(items), u))
        cols.append(items)
        vals.append(np.full(len(items), 1.0 / np.sqrt(len(items))))
    n_users = len(train_seqs)
    if not rows:
        return np.zeros((n_items, 1), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    col_norm = np.sqrt(np.bincount(c, weights=v**2, minlength=n_items))
    v = v / np.maximum(col_norm[c], 1e-12)
    k = max(1, min(rank, n_items, n_users))
    import torch

    xs = torch.sparse_coo_tensor(torch.from_numpy(np.stack([r, c])), torch.from_numpy(v),
                                 (n_users, n_items), check_invariants=True).coalesce()
    if n_items <= 6000:  # exact: eigendecomposition of the item-item cosine matrix X^T X
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            gram = torch.sparse.mm(xs.t().coalesce(), xs).to_dense().numpy()
        w, vecs = np.linalg.eigh(gram)
        top = np.argsort(-w)[:k]
        emb = vecs[:, top] * np.sqrt(np.maximum(w[top], 0.0))
    else:  # large catalogue: randomized low-rank SVD of the sparse user-item matrix
        torch.manual_seed(seed)
        _, sv, vmat = torch.svd_lowrank(xs, q=k, niter=4)
        emb = (vmat * sv).numpy()
    return emb.astype(np.float32)


def fit_response_model(
    train_seqs: list[np.ndarray],
    next_items: np.ndarray,
    n_items: int,
    rated_items: np.ndarray | None = None,
    ratings: np.ndarray | None = None,
    n_neg: int = 4,
    rank: int = 64,
    l2: float = 1e-3,
    steps: int = 500,
    lr: float = 0.5,
    logit_offset: float = 0.0,
    buy_prior: float = 10.0,
    default_buy_prob: float = 0.6,
    seed: int = 0,
) -> ResponseModel:
    """Fit the response model on logged data.

    train_seqs: each user's chronological train item indices; next_items: the held-out next item per user
    (-1: none; use the validation item, never the test item); rated_items/ratings: optional flat arrays of the
    train interactions' items and ratings (NaN: unrated): purchase given click = per-item share of ratings >= 4,
    smoothed toward the global share with `buy_prior` pseudo-counts; without them `default_buy_prob` everywhere.
    """
    rng = np.random.default_rng(seed)
    counts = item_counts(train_seqs, n_items)
    emb = cooc_embeddings(train_seqs, n_items, rank=rank, seed=seed)
    buy = _buy_prob(rated_items, ratings, n_items, buy_prior, default_buy_prob)
    model = ResponseModel(item_emb=emb, log_pop=np.log1p(counts), buy_prob=buy, weights=np.zeros(len(FEATURES)),
                          bias=0.0, feat_mean=np.zeros(len(FEATURES)), feat_std=np.ones(len(FEATURES)),
                          logit_offset=logit_offset)
    x, y = _pairs(model, train_seqs, next_items, n_neg, rng)
    if len(y) == 0:
        raise ValueError("fit_response_model: no user has both a train history and a next item")
    model.feat_mean = x.mean(axis=0)
    model.feat_std = np.maximum(x.std(axis=0), 1e-6)
    z = (x - model.feat_mean) / model.feat_std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):  # full-batch gradient descent on the L2-regularised log loss
        g = _sigmoid(z @ w + b) - y
        w -= lr * (z.T @ g / len(y) + l2 * w)
        b -= lr * g.mean()
    model.weights, model.bias = w, float(b)
    model.meta = {"n_pairs": int(len(y)), "n_pos": int(y.sum()), "n_neg": n_neg, "features": list(FEATURES),
                  "weights": [float(v) for v in w], "bias": float(b)}
    return model


def item_counts(seqs: list[np.ndarray], n_items: int) -> np.ndarray:
    """Interaction counts per item over `seqs` (float64 [n_items])."""
    counts = np.zeros(n_items, dtype=np.float64)
    for s in seqs:
        np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
    return counts


def _negatives(rng: np.random.Generator, n_items: int, seen: set[int], n: int) -> np.ndarray:
    """Up to `n` distinct random items outside `seen` (rejection sampling; exact when the pool is small)."""
    free = n_items - len(seen)
    if free <= 0:
        return np.zeros(0, dtype=np.int64)
    if free <= 4 * n:
        pool = np.setdiff1d(np.arange(n_items), np.fromiter(seen, dtype=np.int64))
        return rng.choice(pool, size=min(n, len(pool)), replace=False)
    out: set[int] = set()
    while len(out) < n:
        j = int(rng.integers(n_items))
        if j not in seen:
            out.add(j)
    return np.fromiter(out, dtype=np.int64)


def _buy_prob(items, ratings, n_items, prior, default):
    if items is None or ratings is None or len(items) == 0:
        return np.full(n_items, default)
    items = np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    known = ~np.isnan(ratings)
    if not known.any():
        return np.full(n_items, default)
    items, high = items[known], (ratings[known] >= 4).astype(np.float64)
    share = high.mean()
    n = np.bincount(items, minlength=n_items)[:n_items]
    k = np.bincount(items, weights=high, minlength=n_items)[:n_items]
    return (k + prior * share) / (n + prior)


def _pairs(model, train_seqs, next_items, n_neg, rng):
    xs, ys = [], []
    for seq, nxt in zip(train_seqs, next_items):
        if nxt < 0 or len(seq) == 0:
            continue
        negs = _negatives(rng, model.n_items, set(np.asarray(seq).tolist()) | {int(nxt)}, n_neg)
        cands = np.r_[int(nxt), negs].astype(np.int64)
        xs.append(model.features(seq, cands))
        ys.append(np.r_[1.0, np.zeros(len(negs))])
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def auc(model: ResponseModel, train_seqs: list[np.ndarray], next_items: np.ndarray, n_neg: int = 20,
        seed: int = 1) -> float:
    """Per-user AUC of the real next item against `n_neg` random unseen items, averaged (ties count 1/2).

    Pass held-out next items (e.g. test items with history = train + valid) for an honest check.
    """
    rng = np.random.default_rng(seed)
    scores = []
    for seq, nxt in zip(train_seqs, next_items):
        if nxt < 0 or len(seq) == 0:
            continue
        negs = _negatives(rng, model.n_items, set(np.asarray(seq).tolist()) | {int(nxt)}, n_neg)
        if len(negs) == 0:
            continue
        p = model.attraction(seq, np.r_[int(nxt), negs])
        scores.append(((p[0] > p[1:]).sum() + 0.5 * (p[0] == p[1:]).sum()) / len(negs))
    if not scores:
        raise ValueError("auc: no user has both a history and a next item")
    return float(np.mean(scores))


def save_response(path, model: ResponseModel) -> None:
    """Write the fitted response model as one .npz (exported beside the policy, read by the update job)."""
    import json

    np.savez(path, item_emb=model.item_emb, log_pop=model.log_pop, buy_prob=model.buy_prob, weights=model.weights,
             bias=np.float64(model.bias), feat_mean=model.feat_mean, feat_std=model.feat_std,
             logit_offset=np.float64(model.logit_offset), meta=np.asarray(json.dumps(model.meta)))


def load_response(path) -> ResponseModel:
    import json

    with np.load(path) as z:
        return ResponseModel(item_emb=z["item_emb"], log_pop=z["log_pop"], buy_prob=z["buy_prob"],
                             weights=z["weights"], bias=float(z["bias"]), feat_mean=z["feat_mean"],
                             feat_std=z["feat_std"], logit_offset=float(z["logit_offset"]),
                             meta=json.loads(str(z["meta"])))
