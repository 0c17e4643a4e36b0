"""Every DeepSpeed JSON in cluster/deepspeed/ drives the engine code training uses (cluster/ds_train's
build_engine, train_epoch, evaluate, full_state_dict) on 2 Ray Train CPU workers: ZeRO stages 0-3 and
optimizer/parameter CPU offload are the same optimisation (equal weights, losses and held-out metrics), each
engine runs the stage, offload, precision and accumulation its JSON asks for, gradient accumulation changes the
effective batch, and a DeepSpeed checkpoint restores the weights and the optimizer state under every config.

One Ray Train run builds the engines one after another, so the worker group, the process group and the load of
cpu_adam are paid once, not once per config. Ray Train's own checkpointing around the engine (reports, resume after
a killed worker, the fp32 export) is tests/test_resume.py's and the tiny bundle's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.ds_train import (
    DS_CONFIG_DIR,
    build_engine,
    evaluate,
    full_state_dict,
    load_ds_config,
    train_epoch,
)
from prefmine.text.encoder import EncoderConfig, bert_config
from prefmine.text.tasks import RatingTask

CONFIGS = sorted(p.name for p in DS_CONFIG_DIR.glob("*.json"))
ACCUM = "zero2.json+accum2"
EPOCHS = 3


def _task() -> RatingTask:
    cfg = EncoderConfig(finetune_epochs=EPOCHS, batch_size=16, finetune_lr=1e-3, seed=7)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 200, size=(256, 16))
    ratings = (ids[:, 0] % 5 + 1).astype(np.float32)  # learnable: the first token sets the rating
    return RatingTask(cfg, bert_config(cfg, 200), None, ids, np.ones_like(ids), ratings)


def _fp32(state: dict) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in (state or {}).items()}  # ZeRO-3: None off rank 0


def _matrix_loop(config: dict) -> None:  # runs inside each Ray Train worker
    """For each (label, resolved JSON): train the task, save a DeepSpeed checkpoint, load it into a fresh engine,
    then train one more epoch on both; rank 0 writes what it saw under <out>/<label>/."""
    import ray.train

    from cluster.ray_env import set_process_threads

    set_process_threads()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    task, out = config["task"], Path(config["out"])
    for label, ds_config in config["runs"]:
        engine = build_engine(task, ds_config)
        history = []
        for epoch in range(task.epochs):
            loss, _ = train_epoch(engine, task, epoch, rank, world)
            history.append({"loss": loss, **evaluate(engine, task, rank)})
        ckpt = out / label / "checkpoint"
        engine.save_checkpoint(str(ckpt), tag="ds")
        trained = _fp32(full_state_dict(engine))  # a copy: the state dict's tensors are the live parameters
        restored_engine = build_engine(task, ds_config)
        restored_engine.load_checkpoint(str(ckpt), tag="ds")
        restored = _fp32(full_state_dict(restored_engine))
        train_epoch(engine, task, task.epochs, rank, world)  # the same next epoch from both engines
        train_epoch(restored_engine, task, task.epochs, rank, world)
        continued, continued_restored = full_state_dict(engine), full_state_dict(restored_engine)
        if rank == 0:
            offload_param = engine.zero_offload_param()
            base_optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
            facts = {"history": history, "stage": engine.zero_optimization_stage(),
                     "offload_optimizer": engine.zero_cpu_offload(),
                     "offload_param": offload_param is not None and offload_param.device == "cpu",
                     "optimizer": type(base_optimizer).__name__, "bf16": engine.bfloat16_enabled(),
                     "grad_accum": engine.gradient_accumulation_steps()}
            (out / label / "facts.json").write_text(json.dumps(facts))
            torch.save({"trained": trained, "restored": restored, "continued": _fp32(continued),
                        "continued_restored": _fp32(continued_restored)}, out / label / "states.pt")
        del engine, restored_engine


@pytest.fixture(scope="module")
def matrix(ray_session, tmp_path_factory) -> dict:
    """{label: (facts, states)} for every JSON and for zero2.json with 2 gradient accumulation steps."""
    import sys

    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not on the workers' path
    task = _task()
    runs = [(name, load_ds_config(name, task.batch_size, use_gpu=False)) for name in CONFIGS]
    runs.append((ACCUM, load_ds_config("zero2.json", task.batch_size, use_gpu=False, grad_accum=2)))
    out = tmp_path_factory.mktemp("ds_matrix")
    trainer = TorchTrainer(_matrix_loop, train_loop_config={"task": task, "runs": runs, "out": str(out)},
                           torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="ds-matrix", storage_path=str(out / "ray")))
    result = trainer.fit()
    assert result.error is None, result.error
    return {label: (json.loads((out / label / "facts.json").read_text()),
                    torch.load(out / label / "states.pt", weights_only=True)) for label, _ in runs}


def _assert_same(a: dict, b: dict, what: str, rtol=1e-3, atol=1e-4) -> None:
    assert set(a) == set(b), what  # ZeRO-3 consolidates its partitions into a full state dict
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=f"{what}: {k}")


def test_bf16_follows_the_accelerator_and_accumulation_overrides_the_json():
    for name in CONFIGS:
        assert load_ds_config(name, 16, use_gpu=False)["bf16"]["enabled"] is False, name
        assert load_ds_config(name, 16, use_gpu=True)["bf16"]["enabled"] is True, name
        assert load_ds_config(name, 16, use_gpu=False)["train_micro_batch_size_per_gpu"] == 16
    assert load_ds_config("zero2.json", 16, use_gpu=False, grad_accum=4)["gradient_accumulation_steps"] == 4


@pytest.mark.slow
def test_each_engine_runs_what_its_json_asks_for(matrix):
    assert {"zero0.json", "zero1.json", "zero2.json", "zero3.json", "zero2_offload.json",
            "zero3_offload.json"} <= set(CONFIGS)
    for name in CONFIGS:
        facts, _ = matrix[name]
        ds = json.loads((DS_CONFIG_DIR / name).read_text())["zero_optimization"]
        assert facts["stage"] == ds["stage"], name
        assert facts["offload_optimizer"] == ("offload_optimizer" in ds), name
        assert facts["offload_param"] == ("offload_param" in ds), name
        # offload runs DeepSpeed's CPU Adam (the JIT-built cpu_adam op), the others the task's AdamW
        assert facts["optimizer"] == ("DeepSpeedCPUAdam" if "offload_optimizer" in ds else "AdamW"), name
        assert facts["bf16"] is False and facts["grad_accum"] == 1, name
    assert matrix[ACCUM][0]["grad_accum"] == 2


@pytest.mark.slow
def test_every_zero_stage_and_offload_trains_the_same_model(matrix):
    ref_facts, ref = matrix["zero0.json"]
    ref_hist = ref_facts["history"]
    assert ref_hist[-1]["loss"] < ref_hist[0]["loss"]
    for name in CONFIGS:
        facts, states = matrix[name]
        _assert_same(states["trained"], ref["trained"], name)
        hist = facts["history"]
        assert [round(h["loss"], 3) for h in hist] == [round(h["loss"], 3) for h in ref_hist], name
        # evaluated on rank 0, with every rank taking part under ZeRO-3
        assert [round(h["heldout_rating_mae"], 3) for h in hist] == [round(h["heldout_rating_mae"], 3)
                                                                     for h in ref_hist], name


@pytest.mark.slow
def test_a_checkpoint_restores_weights_and_optimizer_state_under_every_config(matrix):
    for label, (_, states) in matrix.items():
        _assert_same(states["restored"], states["trained"], f"{label} restored", rtol=0, atol=0)
        if label == ACCUM:  # its epochs (7 micro-batches a rank) end inside an accumulation window, whose
            continue        # pending gradient no checkpoint holds: the next epochs differ by that micro-batch
        # the optimizer's moments came back too: one more epoch from the restored engine lands where the
        # original lands (a fresh AdamW would take different first steps), and both moved from the checkpoint
        _assert_same(states["continued_restored"], states["continued"], f"{label} continued", rtol=1e-5,
                     atol=1e-6)
        assert not torch.allclose(states["continued"]["head.weight"], states["trained"]["head.weight"]), label


@pytest.mark.slow
def test_gradient_accumulation_changes_the_effective_batch(matrix):
    facts, states = matrix[ACCUM]
    _, ref = matrix["zero2.json"]
    assert facts["history"][-1]["loss"] < facts["history"][0]["loss"]
    assert not torch.allclose(states["trained"]["head.weight"], ref["trained"]["head.weight"])
