"""The simulator's inputs for a dataset and a trained bundle: the logged data plus the bundle's ranker.

`simulator_inputs(ds, bundle)` is what the pipeline's policy stage, the evaluation job and the policy benchmark
train and evaluate on. Purchase rates come from train-period reviews only, so a user's valid/test item stays
held out of the response model. No Ray: the ranker is loaded in-process (`RankerRuntime`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefmine.data.dataset import Dataset
from prefmine.policy.simulator import SimulatorInputs, build_simulator_inputs


def simulator_inputs(ds: Dataset, bundle: Path) -> SimulatorInputs:
    """Simulator built from the logged data and the bundle's ranker (user states, item vectors, and its score
    blend: the simulator's candidates and scores are the ones serving computes)."""
    from prefmine.ranker.runtime import RankerRuntime

    ranker = RankerRuntime(bundle)
    states = ranker.user_states(ds.train_seqs)
    rated_items, ratings = train_ratings(ds)
    return build_simulator_inputs(ds.train_seqs, ds.valid_item, ds.n_items, states, ranker.item_vectors,
                                  rated_items=rated_items, ratings=ratings, seed=0,
                                  blend=ranker.blend)


def train_ratings(ds: Dataset) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(item indices, ratings) of the train-period reviews on catalogue items; (None, None) without reviews.

    A review of a user's valid or test item is left out: that item is the evaluation's future."""
    rev = ds.reviews
    if rev is None:
        return None, None
    held_out = {(ds.users[u], ds.item_ids[i]) for target in (ds.valid_item, ds.test_item)
                for u, i in enumerate(target) if i >= 0}
    train_rows = np.array([(u, i) not in held_out for u, i in zip(rev["user"], rev["item"])], dtype=bool)
    known = rev["item"].isin(ds.item_index).to_numpy() & rev["rating"].notna().to_numpy() & train_rows
    rated_items = rev.loc[known, "item"].map(ds.item_index).to_numpy().astype(np.int64)
    ratings = rev.loc[known, "rating"].to_numpy().astype(np.float32)
    return rated_items, ratings
