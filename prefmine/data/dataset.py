"""The canonical dataset, loaded into index form for training and evaluation.

Items are indexed 0..n_items-1 in items.parquet order; users in order of first appearance. Each user has a
chronological train sequence and at most one valid and one test item (leave-one-out). Evaluation on `valid` reads
the train sequence; on `test` it reads train + valid, and excludes those items from the ranking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EVENTS = ("view", "click", "cart", "buy", "rate")


@dataclass
class Dataset:
    path: Path
    manifest: dict
    items: pd.DataFrame
    item_ids: np.ndarray
    item_index: dict
    users: np.ndarray
    train_seqs: list
    train_events: list
    valid_item: np.ndarray
    test_item: np.ndarray
    reviews: pd.DataFrame = field(repr=False, default=None)
    train_times: list = field(repr=False, default=None)  # per user, event times (unix seconds) of train_seqs
    valid_time: np.ndarray = field(repr=False, default=None)  # -1 where the user has no valid item
    test_time: np.ndarray = field(repr=False, default=None)
    valid_event: np.ndarray = field(repr=False, default=None)  # EVENTS index of the valid item (-1: none)
    test_event: np.ndarray = field(repr=False, default=None)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def popularity(self) -> np.ndarray:
        counts = np.zeros(self.n_items, dtype=np.float64)
        for seq in self.train_seqs:
            np.add.at(counts, seq, 1.0)
        return counts

    def eval_users(self, phase: str) -> np.ndarray:
        target = self.valid_item if phase == "valid" else self.test_item
        return np.flatnonzero(target >= 0)

    def history(self, user: int, phase: str) -> np.ndarray:
        """Input sequence for predicting the `phase` item: train (+ valid for test)."""
        seq = self.train_seqs[user]
        if phase == "test" and self.valid_item[user] >= 0:
            seq = np.append(seq, self.valid_item[user])
        return seq

    def history_times(self, user: int, phase: str) -> np.ndarray:
        """Event times aligned with `history(user, phase)` (time-gap features)."""
        t = self.train_times[user]
        if phase == "test" and self.valid_item[user] >= 0:
            t = np.append(t, self.valid_time[user])
        return t

    def history_events(self, user: int, phase: str) -> np.ndarray:
        """Event types (EVENTS indices) aligned with `history(user, phase)`: what the ranker trains on."""
        e = self.train_events[user]
        if phase == "test" and self.valid_item[user] >= 0:
            e = np.append(e, self.valid_event[user])
        return e

    def targets(self, phase: str) -> np.ndarray:
        return self.valid_item if phase == "valid" else self.test_item

    def full_sequences(self) -> list[np.ndarray]:
        """Every known event of every user, for serving histories."""
        return self._full(self.train_seqs, self.valid_item, self.test_item, np.int64)

    def full_events(self) -> list[np.ndarray]:
        """The event types (EVENTS indices) aligned with `full_sequences`."""
        return self._full(self.train_events, self.valid_event, self.test_event, np.int64)

    def full_times(self) -> list[np.ndarray]:
        """The event times (unix seconds) aligned with `full_sequences`."""
        return self._full(self.train_times, self.valid_time, self.test_time, np.int64)

    def _full(self, train: list, valid: np.ndarray, test: np.ndarray, dtype) -> list[np.ndarray]:
        out = []
        for u in range(self.n_users):
            seq = np.asarray(train[u], dtype=dtype)
            extra = [x for x, item in ((valid[u], self.valid_item[u]), (test[u], self.test_item[u])) if item >= 0]
            out.append(np.concatenate([seq, np.asarray(extra, dtype=dtype)]) if extra else seq)
        return out


def load_dataset(path: str | Path, with_reviews: bool = False, tombstones: str | Path | None = None) -> Dataset:
    """The dataset at `path` (a directory, or a URI `prepare` wrote to: prefmine.storage) in index form. Rows of
    people on the tombstone list (`tombstones`, default $PREFMINE_TOMBSTONES; prefmine/data/tombstones.py) are
    dropped, so no training job learns from a copy of the data made before their erasure."""
    from prefmine.data.tombstones import default_location, open_list
    from prefmine.storage import get_dir, is_uri

    if is_uri(path):  # an object store (prepare --out URI): downloaded once per node and content, each file checked
        path = get_dir(path)
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a prepared dataset (no manifest.json); run `prefmine data prepare`")
    manifest = json.loads(manifest_path.read_text())
    items = pd.read_parquet(path / "items.parquet")
    inter = pd.read_parquet(path / "interactions.parquet")
    tomb_path = tombstones if tombstones else default_location()
    erased = open_list(tomb_path).load() if tomb_path else frozenset()
    if erased:
        inter = inter[~inter["user"].isin(erased)].reset_index(drop=True)
    item_ids = items["item"].to_numpy().astype(str)
    item_index = {it: i for i, it in enumerate(item_ids)}
    inter["iidx"] = inter["item"].map(item_index)
    if inter["iidx"].isna().any():
        bad = inter.loc[inter["iidx"].isna(), "item"].iloc[0]
        raise ValueError(f"{path}/interactions.parquet: item {bad!r} is not in items.parquet")
    inter["iidx"] = inter["iidx"].astype(np.int64)
    order = np.lexsort((np.arange(len(inter)), inter["ts"].to_numpy(), pd.factorize(inter["user"])[0]))
    inter = inter.iloc[order]
    codes, users = pd.factorize(inter["user"])
    n_users = len(users)
    train = inter[inter["split"].to_numpy() == "train"]
    tcodes = codes[inter["split"].to_numpy() == "train"]
    bounds = np.searchsorted(tcodes, np.arange(n_users + 1))
    t_items = train["iidx"].to_numpy()
    t_events = train["event"].map({e: i for i, e in enumerate(EVENTS)}).fillna(4).astype(np.int64).to_numpy()
    train_seqs = [t_items[bounds[u]:bounds[u + 1]] for u in range(n_users)]
    train_events = [t_events[bounds[u]:bounds[u + 1]] for u in range(n_users)]
    t_times = train["ts"].to_numpy().astype(np.int64)
    train_times = [t_times[bounds[u]:bounds[u + 1]] for u in range(n_users)]
    valid_item, valid_time = np.full(n_users, -1, dtype=np.int64), np.full(n_users, -1, dtype=np.int64)
    test_item, test_time = np.full(n_users, -1, dtype=np.int64), np.full(n_users, -1, dtype=np.int64)
    valid_event, test_event = np.full(n_users, -1, dtype=np.int64), np.full(n_users, -1, dtype=np.int64)
    all_events = inter["event"].map({e: i for i, e in enumerate(EVENTS)}).fillna(4).astype(np.int64).to_numpy()
    for name, arr, times, evs in (("valid", valid_item, valid_time, valid_event),
                                  ("test", test_item, test_time, test_event)):
        mask = inter["split"].to_numpy() == name
        arr[codes[mask]] = inter["iidx"].to_numpy()[mask]
        times[codes[mask]] = inter["ts"].to_numpy()[mask]
        evs[codes[mask]] = all_events[mask]
    reviews = pd.read_parquet(path / "reviews.parquet") if with_reviews else None
    if reviews is not None and erased:
        reviews = reviews[~reviews["user"].isin(erased)].reset_index(drop=True)
    return Dataset(path=path, manifest=manifest, items=items, item_ids=item_ids, item_index=item_index,
                   users=np.asarray(users).astype(str), train_seqs=train_seqs, train_events=train_events,
                   valid_item=valid_item, test_item=test_item, reviews=reviews, train_times=train_times,
                   valid_time=valid_time, test_time=test_time, valid_event=valid_event, test_event=test_event)
