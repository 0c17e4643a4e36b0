"""bench.quality's S3-Rec runs: the early-stopping metric is a RankerConfig setting (Recall@10 for the S3-Rec
protocol), and the wall time to the best validation epoch is summed from per-epoch times."""

from __future__ import annotations

import numpy as np
import pytest


def test_select_metric_is_a_ranker_setting_and_bad_names_are_rejected():
    from bench.quality import ranker_config
    from prefmine.ranker.model import RankerConfig
    from prefmine.ranker.task import RankerTask

    seqs, events = [np.array([0, 1, 2]), np.array([2, 3, 1])], [np.zeros(3, int), np.zeros(3, int)]
    assert RankerTask(RankerConfig(), 4, seqs, events).select_metric == "valid_NDCG@10"  # default unchanged
    assert ranker_config("Beauty", 1).select_metric == "Recall@10"  # the S3-Rec protocol's early stopping
    assert ranker_config("Gift_Cards", 1).select_metric == "NDCG@10"
    task = RankerTask(RankerConfig(select_metric="Recall@10"), 4, seqs, events,
                      valid_histories=[np.array([0, 1])], valid_targets=np.array([3]))
    assert task.select_metric == "valid_Recall@10"
    assert task.select_metric in task.evaluate(task.build_model())  # the trainer finds what it selects on
    with pytest.raises(ValueError, match="select_metric"):
        RankerTask(RankerConfig(select_metric="MRR@10"), 4, seqs, events)


def test_time_to_best_sums_epoch_times_up_to_the_best_epoch():
    from bench.ranker_resume import time_to_best

    hist = [{"epoch": 0, "epoch_seconds": 2.0, "eval_seconds": 1.0, "valid_Recall@10": 0.1},
            {"epoch": 1, "epoch_seconds": 2.0, "eval_seconds": 1.0, "valid_Recall@10": 0.3},
            {"epoch": 2, "epoch_seconds": 2.0, "eval_seconds": 1.0, "valid_Recall@10": 0.2}]
    assert time_to_best(hist, "valid_Recall@10") == {"best_epoch": 1, "best_value": 0.3, "seconds_to_best": 6.0}
