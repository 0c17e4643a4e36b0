"""Every DeepSpeed JSON in cluster/deepspeed/ trains through the same Ray Train TorchTrainer on 2 CPU workers:
ZeRO stages 0-3 and optimizer/parameter CPU offload are the same optimisation (equal final weights), and gradient
accumulation changes the effective batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.ds_train import DS_CONFIG_DIR, DistConfig, train
from prefmine.text.encoder import EncoderConfig, bert_config
from prefmine.text.tasks import RatingTask

CONFIGS = sorted(p.name for p in DS_CONFIG_DIR.glob("*.json"))


def _task() -> RatingTask:
    cfg = EncoderConfig(finetune_epochs=3, batch_size=16, finetune_lr=1e-3, seed=7)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 200, size=(256, 16))
    ratings = (ids[:, 0] % 5 + 1).astype(np.float32)  # learnable: the first token sets the rating
    return RatingTask(cfg, bert_config(cfg, 200), None, ids, np.ones_like(ids), ratings)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    runs = {}
    storage = tmp_path_factory.mktemp("ds_runs")
    for name in CONFIGS:
        r = train(_task(), f"ds-{name[:-5]}", storage, DistConfig(deepspeed_config=name))
        runs[name] = (r.history, torch.load(r.state_dict_path, weights_only=True))
    r = train(_task(), "ds-zero2-accum2", storage, DistConfig(deepspeed_config="zero2.json", grad_accum=2))
    runs["zero2.json+accum2"] = (r.history, torch.load(r.state_dict_path, weights_only=True))
    return runs


@pytest.mark.slow
def test_every_zero_stage_and_offload_trains_the_same_model(trained):
    assert {"zero0.json", "zero1.json", "zero2.json", "zero3.json", "zero2_offload.json",
            "zero3_offload.json"} <= set(CONFIGS)
    ref_hist, ref = trained["zero0.json"]
    assert ref_hist[-1]["loss"] < ref_hist[0]["loss"]
    for name in CONFIGS:
        hist, state = trained[name]
        assert set(state) == set(ref), name  # ZeRO-3 consolidates its partitions into a full state dict
        for k in ref:
            torch.testing.assert_close(state[k], ref[k], rtol=1e-3, atol=1e-4, msg=f"{name}: {k}")
        assert [round(h["loss"], 3) for h in hist] == [round(h["loss"], 3) for h in ref_hist], name


@pytest.mark.slow
def test_gradient_accumulation_changes_the_effective_batch(trained):
    hist, state = trained["zero2.json+accum2"]
    _, ref = trained["zero2.json"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not torch.allclose(state["head.weight"], ref["head.weight"])
