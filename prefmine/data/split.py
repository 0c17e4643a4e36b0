"""Leave-one-out split by time.

Each user's interactions are ordered by timestamp, ties broken by the raw file's order (Amazon timestamps are
days, so ties are common). The last interaction is `test`, the one before it `valid`, the rest `train`. Users with
fewer than three interactions keep them all in `train`: they still shape popularity and item statistics, but are
not evaluated.
"""

from __future__ import annotations

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
