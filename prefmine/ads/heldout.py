"""Logged sequences and real held-out click labels, for fitting and checking the calibrator.

`read_sequences` reads a seqrec sequence file (`user item_1 ... item_n`, e.g. seqrec/Beauty/Beauty.txt) with the
project's own reader (bad lines skipped and counted) into per-user item-index arrays. `split_last` cuts each
sequence into history / validation item / test item (leave-one-out by time). `labelled_pairs` turns held-out
items into (user, candidate, label) rows: the user's real next item (label 1) beside `n_neg` random items
outside the history (label 0), the same sampled-negative protocol the response model's AUC check uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_sequences(path: str | Path) -> tuple[list[np.ndarray], list[str], dict]:
    """(sequences as item indices in file order, raw item ids by index, bad-row counts)."""
    from prefmine.data.rows import BadRows
    from prefmine.data.sources.seqrec import read_chunk

    bad = BadRows("skip")
    frames = list(read_chunk({"path": str(path)}, bad))
    if not frames:
        raise ValueError(f"{path}: no valid sequence line")
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    codes, items = pd.factorize(df["item"], sort=False)
    users = df["user"].to_numpy()
    cut = np.flatnonzero(users[1:] != users[:-1]) + 1
    seqs = np.split(codes.astype(np.int64), cut)
    return seqs, [str(i) for i in items], dict(bad.counts)


def split_last(seqs: list[np.ndarray], min_len: int = 3):
    """(histories, valid items, test items) of the sequences with at least `min_len` items."""
    keep = [s for s in seqs if len(s) >= min_len]
    return [s[:-2] for s in keep], np.array([s[-2] for s in keep]), np.array([s[-1] for s in keep])


def labelled_pairs(histories: list[np.ndarray], next_items: np.ndarray, n_items: int, n_neg: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user row, candidate item, label) arrays: each user's real next item and `n_neg` random unseen items."""
    users, cands, labels = [], [], []
    for u, (h, nxt) in enumerate(zip(histories, next_items)):
        seen = set(h.tolist()) | {int(nxt)}
        negs: list[int] = []
        while len(negs) < n_neg:
            j = int(rng.integers(n_items))
            if j not in seen:
                seen.add(j)
                negs.append(j)
        users.extend([u] * (n_neg + 1))
        cands.extend([int(nxt), *negs])
        labels.extend([1.0] + [0.0] * n_neg)
    return np.asarray(users), np.asarray(cands), np.asarray(labels)


def predict_pairs(model, histories: list[np.ndarray], users: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """The response model's attraction for each (user, candidate) row (grouped by user for speed)."""
    out = np.zeros(len(users), dtype=np.float64)
    cut = np.flatnonzero(np.diff(users)) + 1
    for rows in np.split(np.arange(len(users)), cut):
        out[rows] = model.attraction(histories[int(users[rows[0]])], cands[rows])
    return out
