"""The RecBole atomic file that bench/recbole_anchor.py writes reproduces prefmine's leave-one-out split exactly.

Runs without RecBole: the file is read back with pandas and split the way RecBole 1.2.1 documents and implements
it for `eval_args: {order: TO, split: {LS: valid_and_test}, group_by: user}`: a stable sort of all rows by
timestamp (`Interaction.sort`, numpy argsort kind="stable"), rows grouped by user in that order
(`Dataset._grouped_index`), and per user the last row is test and the one before valid, leaving at least one row
to train (`Dataset._split_index_by_leave_one_out`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.recbole_anchor import HEADER, write_atomic
from prefmine.data.dataset import load_dataset


def recbole_leave_one_out(inter: pd.DataFrame) -> dict:
    """{user token: (train items, valid item or None, test item or None)} as RecBole would split `inter`."""
    order = np.argsort(inter["timestamp:float"].to_numpy(), kind="stable")
    rows = inter.iloc[order]
    out = {}
    for user, items in rows.groupby("user_id:token", sort=False)["item_id:token"]:
        items = items.tolist()
        n_out = min(2, len(items) - 1)  # RecBole's legal_leave_one_num
        keep = len(items) - n_out
        tail = items[keep:]
        valid = tail[0] if n_out == 2 else None
        test = tail[-1] if n_out >= 1 else None
        out[user] = (items[:keep], valid, test)
    return out


def test_atomic_file_reproduces_prefmine_split(magazine5, tmp_path):
    ds = load_dataset(magazine5)
    path = write_atomic(ds, tmp_path, "mag5")
    assert path == tmp_path / "mag5" / "mag5.inter"
    assert path.read_text().splitlines()[0] + "\n" == HEADER
    inter = pd.read_csv(path, sep="\t", dtype={"user_id:token": str, "item_id:token": str})
    n_expected = sum(len(s) for s in ds.train_seqs) + int((ds.valid_item >= 0).sum()) + int((ds.test_item >= 0).sum())
    assert len(inter) == n_expected == ds.manifest["counts"]["interactions"]

    # Scramble the row order: the split must follow from the timestamps alone, not from where rows sit.
    inter = inter.sample(frac=1.0, random_state=0).reset_index(drop=True)
    split = recbole_leave_one_out(inter)
    assert len(split) == ds.n_users
    assert inter["item_id:token"].nunique() <= ds.n_items
    n_checked = 0
    for u in range(ds.n_users):
        train, valid, test = split[str(u)]
        assert [int(x) for x in train] == ds.train_seqs[u].tolist(), f"user {u}: train sequence differs"
        assert valid is not None and int(valid) == ds.valid_item[u], f"user {u}: valid item differs"
        assert test is not None and int(test) == ds.test_item[u], f"user {u}: test item differs"
        n_checked += 1
    assert n_checked == ds.n_users > 100
    # The data has repeated (user, item) events: the check above would catch a writer that deduplicated.
    assert ds.manifest["duplicates"]["repeated_events"] > 0


def test_split_check_detects_a_wrong_order(magazine5, tmp_path):
    """The checker is not vacuous: swapping one user's last two timestamps moves its valid and test items."""
    ds = load_dataset(magazine5)
    path = write_atomic(ds, tmp_path, "mag5")
    inter = pd.read_csv(path, sep="\t", dtype={"user_id:token": str, "item_id:token": str})
    u = next(u for u in range(ds.n_users) if ds.valid_item[u] != ds.test_item[u])
    rows = inter.index[inter["user_id:token"] == str(u)]
    a, b = rows[-2], rows[-1]
    inter.loc[[a, b], "timestamp:float"] = inter.loc[[b, a], "timestamp:float"].to_numpy()
    _, valid, test = recbole_leave_one_out(inter)[str(u)]
    assert (int(valid), int(test)) == (ds.test_item[u], ds.valid_item[u])
