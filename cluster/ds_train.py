"""Ray Train TorchTrainer whose workers drive a DeepSpeed engine: the one training path for encoder and ranker.

The same code runs on this laptop-class CPU (DeepSpeed's CPU accelerator, gloo) and on GPUs (NCCL, bf16): only
`DistConfig` changes. Every epoch reports its metrics; every `checkpoint_every` epochs (and at the end) every
worker saves its DeepSpeed checkpoint shard and reports it through Ray Train (merged into one checkpoint
directory), rank 0 adding a plain fp32 `model.pt` for export and the metrics history;
a restarted worker group resumes from the last checkpoint (FailureConfig). Progress is printed per step with
rate and ETA; rank 0 also writes each epoch's metrics to `<storage>/<name>/metrics.jsonl` and TensorBoard
(`cluster/metrics_log.py`).

Model selection: a task with a `select_metric` (a key its `evaluate` returns, higher is better) has its best epoch
kept as the exported `model.pt`, and with `patience` > 0 training stops after that many epochs without a better
value (early stopping, as RecBole's `stopping_step`). The best weights travel in every checkpoint, so a resumed
run selects exactly as an uninterrupted one; a run that early-stopped is marked so in its checkpoint, and a
later restore of it (the same run name and storage, started again) trains no further.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.metrics_log import EpochLog
from prefmine.jit_locks import clear_stale_locks
from prefmine.progress import EpochFollower
from prefmine.train_task import DistConfig  # noqa: F401  (the trainer's settings; imported from here too)

DS_CONFIG_DIR = Path(__file__).parent / "deepspeed"


@dataclass
class TrainResult:
    state_dict_path: Path
    checkpoint_dir: Path
    history: list = field(default_factory=list)
    seconds: float = 0.0


def load_ds_config(name: str, micro_batch: int, use_gpu: bool, grad_accum: int = 0) -> dict:
    path = Path(name) if Path(name).is_file() else DS_CONFIG_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {name!r} not found (looked in {DS_CONFIG_DIR})")
    cfg = json.loads(path.read_text())
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg.pop("train_batch_size", None)
    if grad_accum:
        cfg["gradient_accumulation_steps"] = int(grad_accum)
    bf16 = cfg.get("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = bool(use_gpu)
    return cfg


def build_engine(task, ds_config: dict):
    """The task's model wrapped in a DeepSpeed engine built from `ds_config` (a resolved JSON, `load_ds_config`).

    Seeded by the task before the model is built, so every rank and every ZeRO stage starts from the same
    weights. The optimizer is DeepSpeed's own when the JSON names one (CPU Adam for offload), with the task's
    learning rate and weight decay filled in where the JSON says "auto"; otherwise AdamW. Call it inside a
    worker whose process group is up (Ray Train's); the dict is copied, never changed.
    """
    import copy

    import deepspeed
    import torch

    deepspeed.utils.logger.setLevel(logging.WARNING)
    ds_config = copy.deepcopy(ds_config)
    torch.manual_seed(task.seed)
    model = task.build_model()
    try:  # a build lock left by a killed worker would hang deepspeed.initialize forever
        for lock in clear_stale_locks():
            print(f"[ds_train] removed a stale torch extension build lock: {lock}", flush=True)
    except OSError:
        pass
    params = [p for p in model.parameters() if p.requires_grad]
    if "optimizer" in ds_config:  # DeepSpeed builds it (CPU Adam for offload); fill the task's settings in
        opt_params = ds_config["optimizer"].setdefault("params", {})
        opt_params.update({k: v for k, v in (("lr", task.lr), ("weight_decay", task.weight_decay))
                           if opt_params.get(k, "auto") == "auto"})
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(params, lr=task.lr, weight_decay=task.weight_decay)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def train_epoch(engine, task, epoch: int, rank: int, world: int, on_step=None) -> tuple[float, float]:
    """One epoch of `task` on this rank's shard: (mean loss over every rank's steps, number of those steps).

    Seeded per (epoch, rank): dropout draws do not depend on how many epochs this process has run, so a run
    resumed from a checkpoint takes the same path as an uninterrupted one. `on_step(step, loss)` is called after
    each batch's `engine.step()` (progress lines). The mean is an all-reduce: every rank must call this.
    """
    import torch
    import torch.distributed as tdist

    torch.manual_seed(task.seed * 1_000_003 + epoch * 1_009 + rank)
    engine.train()
    loss_sum, n = 0.0, 0
    for step, batch in enumerate(task.batches(epoch, rank, world)):
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        loss = task.loss(engine, batch)
        engine.backward(loss)
        engine.step()
        loss_sum += float(loss.detach())
        n += 1
        if on_step is not None:
            on_step(step, float(loss.detach()))
    mean = torch.tensor([loss_sum, n], dtype=torch.float64)
    if tdist.is_initialized():
        tdist.all_reduce(mean)
    return float(mean[0] / max(mean[1], 1)), float(mean[1])


def full_state_dict(engine) -> dict:
    """The engine's whole model state dict; under ZeRO-3 the partitions are gathered first, a collective call
    every rank must make (rank 0 gets the whole dict, the other ranks None)."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def evaluate(engine, task, rank: int) -> dict:
    """The task's held-out metrics of the engine's model, computed on rank 0; under ZeRO-3 every rank must call
    this (a forward pass gathers parameters from all of them) and the others' results are discarded ({})."""
    import torch

    engine.eval()
    if rank != 0 and engine.zero_optimization_stage() != 3:
        return {}
    with torch.no_grad():
        metrics = task.evaluate(engine.module)
    return metrics if rank == 0 else {}


def _train_loop(config: dict) -> None:  # runs inside each Ray Train worker
    import ray.train
    import torch
    import torch.distributed as tdist

    from cluster.ray_env import set_process_threads

    set_process_threads()
    task = config["task"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    engine = build_engine(task, config["ds_config"])

    select, patience = getattr(task, "select_metric", None), int(getattr(task, "patience", 0) or 0)
    start_epoch, history, restarts = 0, [], 0
    best = {"value": None, "epoch": -1}
    best_state = None  # rank 0: fp32 CPU copy of the best epoch's weights
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag="ds")
            state = json.loads((Path(d) / "state.json").read_text())
            start_epoch, history = state["epoch"] + 1, state["history"]
            restarts = state.get("restarts", 0) + 1
            best = state.get("best", best)
            if state.get("stopped"):  # early-stopped before the restart: nothing left to train
                start_epoch = task.epochs
            if rank == 0 and (Path(d) / "best.pt").exists():
                best_state = torch.load(Path(d) / "best.pt", map_location="cpu", weights_only=True)
        if rank == 0:
            print(f"[{config['name']}] resumed from epoch {start_epoch - 1}", flush=True)

    log = EpochLog(config["log_dir"], history, start_epoch) if rank == 0 and config.get("log_dir") else None
    steps = task.steps_per_epoch(world)
    total = steps * task.epochs
    t0, done = time.time(), 0
    for epoch in range(start_epoch, task.epochs):
        t_epoch = time.time()

        def progress(step, loss, epoch=epoch):
            nonlocal done
            done += 1
            if rank == 0 and (step % config["log_every"] == 0 or step == steps - 1):
                rate = done / max(time.time() - t0, 1e-9)
                left = (total - epoch * steps - step - 1) / max(rate, 1e-9)
                print(f"[{config['name']}] epoch {epoch + 1}/{task.epochs} step {step + 1}/{steps} "
                      f"loss {loss:.4f} {rate:.1f} steps/s ETA {left:.0f}s", flush=True)

        mean_loss, n_steps = train_epoch(engine, task, epoch, rank, world, progress)
        seconds = time.time() - t_epoch
        # ended_at (wall clock): consecutive epochs' difference is the time per epoch with evaluation and
        # checkpointing (to the run storage) included, which epoch_seconds leaves out (bench.cluster_scale)
        metrics = {"epoch": epoch, "loss": mean_loss, "epoch_seconds": round(seconds, 3), "restarts": restarts,
                   "samples_per_s": round(n_steps * task.batch_size / max(seconds, 1e-9), 2),
                   "ended_at": round(time.time(), 3)}
        t_eval = time.time()
        metrics.update(evaluate(engine, task, rank))
        metrics["eval_seconds"] = round(time.time() - t_eval, 3)
        improved = False
        if select and select in metrics and (best["value"] is None or metrics[select] > best["value"]):
            best, improved = {"value": float(metrics[select]), "epoch": epoch}, True
        if select:
            metrics["best_epoch"] = best["epoch"]
        history.append(metrics)
        if log is not None:
            log.write(metrics)
        if rank == 0:
            print(f"[{config['name']}] epoch {epoch + 1} " +
                  " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                           if k not in ("epoch", "epoch_seconds", "ended_at")),
                  flush=True)
        # rank 0 alone evaluates (except under ZeRO-3): it decides, and tells the others, whether to keep/stop
        flags = torch.tensor([float(improved), float(patience > 0 and best["epoch"] >= 0
                                                     and epoch - best["epoch"] >= patience)])
        if tdist.is_initialized():
            tdist.broadcast(flags, 0)
        improved, stop = bool(flags[0]), bool(flags[1])
        if improved:
            full = full_state_dict(engine)
            if rank == 0:
                best_state = {k: v.detach().float().cpu().clone() for k, v in full.items()}
        last = stop or epoch == task.epochs - 1
        every = config["checkpoint_every"] or max(1, task.epochs // 10)
        if (epoch + 1) % every and not last:
            ray.train.report({**metrics, "history": json.dumps(history)})
            continue
        if log is not None and config.get("log_uri"):  # rank 0's node disk is not shared: logs to the store too
            upload_logs(log.dir, config["log_uri"])
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag="ds")
            full = full_state_dict(engine)  # ZeRO-3: gathered from every rank before rank 0 saves it
            if rank == 0:
                final = best_state if best_state is not None else {k: v.float() for k, v in full.items()}
                torch.save(final, Path(tmp) / "model.pt")  # the export: the best epoch when selecting
                if best_state is not None:
                    torch.save(best_state, Path(tmp) / "best.pt")
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch, "history": history,
                                                                     "restarts": restarts, "best": best,
                                                                     "stopped": stop}))
            ray.train.report({**metrics, "history": json.dumps(history)},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if stop:
            if rank == 0:
                print(f"[{config['name']}] early stop after epoch {epoch + 1}: best {select} "
                      f"{best['value']:.4f} at epoch {best['epoch'] + 1}", flush=True)
            break
    if log is not None:
        log.close()


def is_run_log(rel: str) -> bool:
    """Whether a path inside a run's folder is one of rank 0's logs (metrics.jsonl, TensorBoard files)."""
    return rel == "metrics.jsonl" or rel.startswith("tensorboard/")


def upload_logs(log_dir: Path, uri: str) -> None:
    """Copy a run's metrics.jsonl and TensorBoard files from rank 0's node to `uri` (the run's folder in the
    store), overwriting the previous copy: on a URI storage they are then readable from any node."""
    from prefmine.storage import copy_file, list_files, resolve

    local_fs, local = resolve(log_dir)
    fs, root = resolve(uri)
    for rel in list_files(local_fs, local):
        if is_run_log(rel):
            parent = os.path.dirname(rel)
            fs.create_dir(f"{root}/{parent}" if parent else root, recursive=True)
            copy_file(local_fs, f"{local}/{rel}", fs, f"{root}/{rel}", 1 << 20)


def keep_run_record(storage: str, name: str, checkpoint_path: str, record: Path) -> None:
    """`record/<name>`: a run stored at a URI, as a bundle keeps a local run after `drop_checkpoints` — its
    metrics.jsonl and TensorBoard files (uploaded by rank 0) and `checkpoint.json`, the files of its last
    checkpoint with their sizes and where they are stored."""
    import pyarrow.fs as pafs

    from prefmine.storage import copy_file, join, resolve

    fs, root = resolve(storage)
    run_root = f"{root}/{name}"
    dest = Path(record) / name
    dest.mkdir(parents=True, exist_ok=True)
    local = pafs.LocalFileSystem()
    files: dict[str, int] = {}
    for info in fs.get_file_info(pafs.FileSelector(run_root, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(run_root) + 1:]
        if is_run_log(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            copy_file(fs, info.path, local, str(dest / rel), 1 << 20)
        elif info.path.startswith(checkpoint_path.rstrip("/") + "/"):
            files[rel] = info.size
    (dest / "checkpoint.json").write_text(json.dumps({"stored_at": join(storage, name), "files": files}, indent=1))


def run_storage(bundle: str | Path, dist: DistConfig | None) -> str | Path:
    """Where a bundle's Ray Train runs live: `dist.storage` (`<uri>/train`) when set, else `<bundle>/.train`."""
    from prefmine.storage import join

    return join(dist.storage, "train") if dist is not None and dist.storage else Path(bundle) / ".train"


def train(task, name: str, storage: str | Path, dist: DistConfig | None = None,
          record: Path | None = None) -> TrainResult:
    """Run `task` under Ray Train + DeepSpeed; return the path of the final fp32 state dict.

    `storage` is a local directory or a URI (`prefmine.storage`: s3://, gs://, hdfs://...): Ray Train keeps the
    run's state and checkpoints there, so on a URI no node needs a disk shared with the driver, and the final
    checkpoint is downloaded to a local temporary directory for the caller. Rank 0 then writes `metrics.jsonl`
    and TensorBoard files on its own node's disk and copies them into the run's folder in the store at every
    checkpoint (the driver shows per-epoch progress only when rank 0 runs beside it); `record` (a bundle's
    `.train`) receives them with the list of the last checkpoint's files (`keep_run_record`), so a bundle holds
    its training logs wherever its runs were stored."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.ray_env import ensure_ray
    from prefmine.storage import is_uri, join, resolve

    dist = dist or DistConfig()
    # read by the TrainController actor, which Ray Train starts with this process's value of the variable
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(dist.poll_interval_s)
    ensure_ray()
    remote = is_uri(storage)
    if remote:
        fs, path = resolve(storage)
        fs.create_dir(path, recursive=True)
        where = {"storage_path": path, "storage_filesystem": fs}
        log_dir = Path(tempfile.gettempdir()) / "prefmine-train-logs" / name
    else:
        storage = Path(storage).resolve()
        storage.mkdir(parents=True, exist_ok=True)
        where = {"storage_path": str(storage)}
        log_dir = storage / name
    ds_config = load_ds_config(dist.deepspeed_config, task.batch_size, dist.use_gpu, dist.grad_accum)
    t0 = time.time()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"task": task, "ds_config": ds_config, "name": name, "log_every": dist.log_every,
                           "checkpoint_every": dist.checkpoint_every, "log_dir": str(log_dir),
                           "log_uri": join(storage, name) if remote else None},
        torch_config=TorchConfig(backend="nccl" if dist.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu,
                                     resources_per_worker={"CPU": dist.cpus_per_worker, **dist.worker_resources}),
        run_config=RunConfig(name=name, **where,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=dist.max_failures)),
    )
    # one line per finished epoch on the driver (workers' own output goes to ray.log unless --verbose)
    with EpochFollower(log_dir / "metrics.jsonl", name, task.epochs):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{name} training failed: {result.error}")
    if remote:  # the caller loads model.pt from a local directory
        ckpt_dir = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix=f"prefmine-{name}-")))
        if record is not None:
            keep_run_record(str(storage), name, result.checkpoint.path, record)
    else:
        ckpt_dir = Path(result.checkpoint.path)
    history = json.loads(result.metrics.get("history", "[]")) if result.metrics else []
    return TrainResult(state_dict_path=ckpt_dir / "model.pt", checkpoint_dir=ckpt_dir, history=history,
                       seconds=round(time.time() - t0, 1))

