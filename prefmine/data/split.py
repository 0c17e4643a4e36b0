"""Leave-one-out splits by time: prefmine's own, and the transformer_benchmark protocol.

Each user's interactions are ordered by timestamp, ties broken by the raw file's order (Amazon timestamps are
days, so ties are common). The last interaction is `test`, the one before it `valid`, the rest `train`. Users with
fewer than three interactions keep them all in `train`: they still shape popularity and item statistics, but are
not evaluated.

`transformer_benchmark` is the protocol behind the eSASRec paper's Beauty/Sports numbers: the same last/second-to-
last targets, plus the test filters and the catalogue that protocol ranks over (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def leave_one_out(inter: pd.DataFrame) -> pd.Series:
    """Return the split label of each row of `inter` (which must keep the raw file order)."""
    order = np.lexsort((np.arange(len(inter)), inter["ts"].to_numpy(), pd.factorize(inter["user"])[0]))
    users = inter["user"].to_numpy()[order]
    grouped = pd.Series(users).groupby(users, sort=False)
    counts = grouped.transform("size").to_numpy()
    rank_from_end = counts - 1 - grouped.cumcount().to_numpy()
    label = np.full(len(order), "train", dtype=object)
    enough = counts >= 3
    label[enough & (rank_from_end == 0)] = "test"
    label[enough & (rank_from_end == 1)] = "valid"
    out = np.empty(len(order), dtype=object)
    out[order] = label
    return pd.Series(out, index=inter.index, name="split")


@dataclass
class BenchmarkSplit:
    """The transformer_benchmark leave-one-out protocol (eSASRec paper) over one interactions table.

    `split` labels each row: `test` (each user's last), `valid` (the one before it) or `train`. `test_kept` marks
    the test rows that are evaluated; `catalogue` is the sorted ids of the items ranked (those in training).
    """

    split: pd.Series
    test_kept: np.ndarray
    catalogue: np.ndarray

    @property
    def kept_users(self) -> int:
        return int(self.test_kept.sum())


def transformer_benchmark(inter: pd.DataFrame) -> BenchmarkSplit:
    """Split as `blondered/transformer_benchmark` does (`LastNSplitter(n=1)` with every filter on).

    Order is `ts`, ties by row order (their splitter ranks by time with method "first"). The last item of every
    user is the test target; everything before it is training input, and the catalogue ranked is the items that
    occur there. A test row is dropped when its user has no training row (cold user), its item never occurs in
    training (cold item), or the user already has that item in training (already seen: the history is excluded
    from the ranking, so such a target could not be reached). The second-to-last item is every user's validation
    target, used only for early stopping with the items before it as input (`get_val_mask_func_all`).
    """
    user_codes = pd.factorize(inter["user"])[0]
    item_codes, item_ids = pd.factorize(inter["item"])
    order = np.lexsort((np.arange(len(inter)), inter["ts"].to_numpy(), user_codes))
    users, items = user_codes[order], item_codes[order].astype(np.int64)
    counts = np.bincount(users)[users]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    rank_from_end = counts - 1 - (np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)])))
    label = np.where(rank_from_end == 0, "test", np.where(rank_from_end == 1, "valid", "train")).astype(object)
    is_test = rank_from_end == 0
    in_training = np.zeros(len(item_ids), dtype=bool)
    in_training[items[~is_test]] = True
    pair = users.astype(np.int64) * len(item_ids) + items
    kept = is_test & (counts > 1) & in_training[items] & ~np.isin(pair, pair[~is_test])
    catalogue = np.sort(np.asarray(item_ids)[in_training])
    split = np.empty(len(order), dtype=object)
    split[order] = label
    test_kept = np.zeros(len(order), dtype=bool)
    test_kept[order] = kept
    return BenchmarkSplit(split=pd.Series(split, index=inter.index, name="split"), test_kept=test_kept,
                          catalogue=catalogue)


def transformer_benchmark_view(ds):
    """A loaded dataset (`prefmine.data.dataset.Dataset`) seen under the transformer_benchmark protocol.

    The items are only those in training (every train sequence and validation item: all but each user's last), in
    the same order, re-indexed; a test target is removed (set to -1) when its item is outside them or already in the
    user's history, so `eval_users("test")` are the kept users and full ranking runs over that catalogue. The
    validation targets stay for every user (early stopping). Equal to `transformer_benchmark` on the interactions
    when every user has at least three events (the canonical split keeps shorter users in train only), which holds
    for the S3-Rec sets. The manifest's data hash gets a suffix so caches keyed by it never mix the two views.

    One difference is left as is: in RecTools' transformer data preparator (read at its current master, not at the
    version transformer_benchmark pins) a model knows only the items of its fit data, validation targets removed
    (Beauty: 12,068 items; 12,066 when each user keeps only the last 51), not the 12,092 ranked here, so there a
    test target among the others can never be hit. The kept users are the same either way.
    """
    import dataclasses

    in_training = np.zeros(ds.n_items, dtype=bool)
    for seq in ds.train_seqs:
        in_training[seq] = True
    in_training[ds.valid_item[ds.valid_item >= 0]] = True
    new = np.full(ds.n_items + 1, -1, dtype=np.int64)  # new[-1] == -1 keeps "no target" as -1
    new[:-1][in_training] = np.arange(int(in_training.sum()))
    test_item = new[ds.test_item]
    for u in np.flatnonzero(test_item >= 0):
        if test_item[u] in set(new[ds.history(u, "test")].tolist()):
            test_item[u] = -1
    item_ids = ds.item_ids[in_training]
    manifest = {**ds.manifest, "data_hash": f"{ds.manifest.get('data_hash')}-tb", "protocol": "transformer_benchmark"}
    return dataclasses.replace(
        ds, manifest=manifest, items=ds.items[in_training].reset_index(drop=True), item_ids=item_ids,
        item_index={it: i for i, it in enumerate(item_ids)}, train_seqs=[new[s] for s in ds.train_seqs],
        valid_item=new[ds.valid_item], test_item=test_item,
        test_time=np.where(test_item >= 0, ds.test_time, -1) if ds.test_time is not None else None)
