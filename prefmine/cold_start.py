"""Cold-item evaluation: can items that never occurred in training be recommended from their text alone?

Protocol (`cold_item_split`): a seeded `frac` (10%) of the items that have interactions is held out entirely:
every interaction with them leaves the train, valid and test data, so no model sees them during training. The
models are trained on what is left (the warm split). Evaluation users are those with at least one interaction with
a cold item and at least one warm interaction; a user's history is their warm interactions in time order
(train, valid and test periods), the targets are the cold items they interacted with. Each model scores items;
the ranking is over the cold items only (the candidate set of new items, as in DropoutNet/CLCRec-style cold-start
evaluation: warm items have a learned ID and would otherwise crowd out every new one), and Recall@K / NDCG@K
(`prefmine.metrics.ranking_metrics`, several targets per user) compare:
  - random: seeded random scores (the floor: Recall@K ~ K / n_cold);
  - text_similarity: cosine between the mean text vector of the user's history and each item's text vector;
  - the ranker trained on the warm split, which scores a cold item through its text-only vector
    (`FusedRanker` drops the ID term of items with no train interaction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prefmine.data.dataset import Dataset
from prefmine.metrics import ranking_metrics, top_k


@dataclass
class ColdSplit:
    cold_items: np.ndarray  # sorted dataset item indices held out of training
    train_seqs: list  # warm-only train data, per user (same users as the dataset)
    train_events: list
    train_times: list
    valid_histories: list  # for model selection on the warm split: (history, target item) of warm valid events
    valid_times: list
    valid_targets: np.ndarray
    users: np.ndarray  # evaluation users
    histories: list  # their warm interactions in time order (all periods)
    history_times: list
    targets: list  # set of cold items per evaluation user


def _full_sequence(ds: Dataset, u: int):
    """Every event of user u (train, valid, test) with its time: the test-phase history plus the test item."""
    items, times = ds.history(u, "test"), ds.history_times(u, "test")
    if ds.test_item[u] >= 0:
        items, times = np.append(items, ds.test_item[u]), np.append(times, ds.test_time[u])
    return items, times


def cold_item_split(ds: Dataset, frac: float = 0.1, seed: int = 0) -> ColdSplit:
    if not 0 < frac < 1:
        raise ValueError(f"cold item fraction must be in (0, 1), got {frac}")
    seen = np.unique(np.concatenate([*ds.train_seqs, ds.valid_item[ds.valid_item >= 0],
                                     ds.test_item[ds.test_item >= 0]]))
    n_cold = max(1, int(round(frac * len(seen))))
    cold = np.sort(np.random.default_rng(seed).choice(seen, n_cold, replace=False))
    is_cold = np.zeros(ds.n_items, dtype=bool)
    is_cold[cold] = True
    train_seqs, train_events, train_times = [], [], []
    for s, e, t in zip(ds.train_seqs, ds.train_events, ds.train_times):
        keep = ~is_cold[s]
        train_seqs.append(s[keep])
        train_events.append(e[keep])
        train_times.append(t[keep])
    valid_h, valid_t, valid_y = [], [], []
    users, histories, history_times, targets = [], [], [], []
    for u in range(ds.n_users):
        v = ds.valid_item[u]
        if v >= 0 and not is_cold[v] and len(train_seqs[u]):
            valid_h.append(train_seqs[u])
            valid_t.append(train_times[u])
            valid_y.append(v)
        items, times = _full_sequence(ds, u)
        mask = is_cold[items]
        if mask.any() and (~mask).any():
            users.append(u)
            histories.append(items[~mask])
            history_times.append(times[~mask])
            targets.append(set(items[mask].tolist()))
    return ColdSplit(cold, train_seqs, train_events, train_times, valid_h, valid_t,
                     np.asarray(valid_y, dtype=np.int64), np.asarray(users, dtype=np.int64), histories,
                     history_times, targets)


def text_similarity_scores(text: np.ndarray) -> Callable:
    """Scores = cosine of the mean (normalised) text vector of a history with every item's text vector."""
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)

    def scores(histories, times=None) -> np.ndarray:
        q = np.stack([unit[h].mean(0) if len(h) else np.zeros(unit.shape[1]) for h in histories])
        return q @ unit.T

    return scores


def random_scores(n_items: int, seed: int = 0) -> Callable:
    rng = np.random.default_rng(seed)
    return lambda histories, times=None: rng.random((len(histories), n_items))


def evaluate_cold(split: ColdSplit, scorers: dict[str, Callable], ks=(5, 10, 20)) -> dict:
    """Metrics per model, ranking only the cold items. A scorer maps (histories, times) to [n, n_items] scores."""
    out = {}
    depth = min(max(ks), len(split.cold_items))
    for name, fn in scorers.items():
        rows = []
        for i in range(0, len(split.users), 1024):
            s = np.asarray(fn(split.histories[i:i + 1024], split.history_times[i:i + 1024]))
            rows.append(split.cold_items[top_k(s[:, split.cold_items], depth)])
        top = np.concatenate(rows) if rows else np.zeros((0, depth), dtype=np.int64)
        out[name] = ranking_metrics(top, split.targets, [k for k in ks if k <= depth])
    return {"cold_items": int(len(split.cold_items)), "users": int(len(split.users)),
            "targets": int(sum(len(t) for t in split.targets)),
            "protocol": "10% of items held out of training entirely; ranked among the cold items only",
            "models": out}
