"""Train and test RecBole models on one atomic dataset; runs inside the RecBole environment (`.venv-recbole`).

Started by `bench.recbole_anchor.run_recbole`; it must not import prefmine (that environment does not have it).

    python bench/recbole_runner.py --data-dir DIR --dataset NAME --models Pop SASRec --seed 2020 --out RESULT.json
                                   [--time-cap-s 300] [--epochs 300] [--state-dir DIR]

RecBole's defaults except: leave-one-out by time (`split: {LS: valid_and_test}`, `order: TO`), full ranking
grouped by user, no filtering (every interaction kept, duplicates included), MAX_ITEM_LIST_LENGTH 50,
train_batch_size 256, stopping_step 5, valid_metric NDCG@10, metrics Recall/NDCG/Precision/MRR/Hit at K=1..20,
sequential models with cross-entropy loss (and so no training negatives), CPU with one torch thread, checkpoints
in a temporary directory. `--time-cap-s` caps each model's training wall clock: when the cap is reached the
epoch in progress finishes (with its validation), training stops, the best checkpoint so far is tested and the
model is reported with `converged: false`.

`--state-dir` makes a run resumable across processes (a MovieLens sequential model needs hours on a laptop CPU):
after every epoch's validation the whole training state (weights, optimizer, epoch, early-stopping counter, best
score and result, RNG states, epoch times) goes atomically to `DIR/<model>.last.pth`, the best weights to
`DIR/<model>.best.pth`, and a finished model's result to `DIR/<model>.result.json`. Each is keyed by a hash of the
atomic .inter file and the model's settings; a run with the same key continues after the last finished epoch (or
reuses the finished result), any other key starts the model afresh. A resumed run differs from an uninterrupted
one only in wall-clock time: the RNG streams are restored with the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

# RecBole 1.2.1 calls torch.load() on its own checkpoints without weights_only; torch >= 2.6 defaults to
# weights_only=True and refuses them (they pickle the Config). This switch restores the old default for calls
# that do not pass weights_only; it must be set before RecBole loads a checkpoint (torch reads it per call).
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

SEQUENTIAL = {"GRU4Rec", "SASRec", "BERT4Rec"}
TOPK = list(range(1, 21))


class _TimeCap(Exception):
    """Raised at the start of an epoch once the model's training time cap is used up."""


class _FirstBatches:
    """The first `n` batches of a RecBole train DataLoader (for timing a partial epoch); other attributes pass."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, min(n, len(loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return self.n

    def __getattr__(self, name):
        return getattr(self.loader, name)


def _rng_state() -> dict:
    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def _timed_trainer(base, time_cap_s: float | None):
    """A subclass of RecBole trainer `base` that counts epochs, times them, honours a wall-clock cap, and can save
    and restore its whole state after an epoch (`save_state` / `load_state`, for `--state-dir`)."""

    class Timed(base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.epoch_train_s: list[float] = []
            self.epoch_valid_s: list[float] = []
            self.fit_start = None
            self.elapsed_before = 0.0  # training seconds spent by earlier processes (a resumed run)
            self.capped = False
            self.resumed_from_epoch = None
            self.train_loader = None  # set by run_model: its shuffle generator is part of the saved state

        def elapsed(self) -> float:
            return self.elapsed_before + (time.perf_counter() - self.fit_start if self.fit_start else 0.0)

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            if self.fit_start is None:
                self.fit_start = time.perf_counter()
            if time_cap_s is not None and self.epoch_train_s and self.elapsed() >= time_cap_s:
                self.capped = True
                raise _TimeCap()
            t0 = time.perf_counter()
            out = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.epoch_train_s.append(time.perf_counter() - t0)
            loss = sum(out) if isinstance(out, tuple) else out
            print(f"[recbole]   epoch {epoch_idx} train {self.epoch_train_s[-1]:.1f}s loss {float(loss):.4f} "
                  f"(elapsed {self.elapsed():.0f}s)", file=sys.stderr, flush=True)
            return out

        def save_state(self, path: Path, epoch_idx: int, key: str) -> None:
            """Everything `fit` needs to continue after `epoch_idx`, written atomically to `path`."""
            state = {"key": key, "epoch": epoch_idx, "cur_step": self.cur_step,
                     "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
                     "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "epoch_train_s": self.epoch_train_s, "epoch_valid_s": self.epoch_valid_s,
                     "elapsed": self.elapsed(), "rng": _rng_state(), "train_loss_dict": self.train_loss_dict,
                     "loader_rng": self.train_loader.generator.get_state()}
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)

        def load_state(self, path: Path, key: str) -> bool:
            """Continue from `path` if it was saved under `key`; False (and nothing changed) otherwise."""
            state = torch.load(path, map_location="cpu", weights_only=False)
            if state.get("key") != key:
                return False
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = state["epoch"] + 1
            self.cur_step = state["cur_step"]
            self.best_valid_score = state["best_valid_score"]
            self.best_valid_result = state["best_valid_result"]
            self.epoch_train_s = list(state["epoch_train_s"])
            self.epoch_valid_s = list(state["epoch_valid_s"])
            self.elapsed_before = float(state["elapsed"])
            self.train_loss_dict = dict(state["train_loss_dict"])
            _set_rng_state(state["rng"])
            self.train_loader.generator.set_state(state["loader_rng"])  # the shuffle order of the next epoch
            self.resumed_from_epoch = state["epoch"]
            return True

        def _valid_epoch(self, valid_data, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._valid_epoch(valid_data, *args, **kwargs)
            self.epoch_valid_s.append(time.perf_counter() - t0)
            print(f"[recbole]   valid {self.epoch_valid_s[-1]:.1f}s {self.config['valid_metric']} {out[0]:.4f}",
                  file=sys.stderr, flush=True)
            return out

    Timed.__name__ = f"Timed{base.__name__}"
    return Timed


def model_config(model: str, seed: int, ckpt_dir: str, data_dir: str, epochs: int) -> dict:
    cfg = {
        "data_path": data_dir,
        "checkpoint_dir": ckpt_dir,
        "device": "cpu",
        "use_gpu": False,
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # no filtering: RecBole's defaults already keep everything; spelled out so a changed default shows
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG", "Precision", "MRR", "Hit"],
        "topk": TOPK,
        "valid_metric": "NDCG@10",
        "train_batch_size": 256,
        "stopping_step": 5,
        "epochs": epochs,
    }
    if model in SEQUENTIAL:
        cfg["loss_type"] = "CE"
        cfg["train_neg_sample_args"] = None  # RecBole requires None with the CE loss
    return cfg


METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "mrr": "MRR", "hit": "Hit"}


def _to_float(d) -> dict:
    """RecBole's result dict ('ndcg@10': 0.1) as {'NDCG@10': 0.1}, the names prefmine's reports use."""
    out = {}
    for k, v in (d or {}).items():
        name, _, at = k.partition("@")
        out[f"{METRIC_NAMES.get(name, name)}@{at}" if at else k] = float(v)
    return out


def _probe(trainer, train_data, valid_data, n: int, counts: dict, load_s: float) -> dict:
    """Time `n` training batches and one validation pass; extrapolate one epoch. No test, no convergence."""
    batches_per_epoch = len(train_data)
    trainer.fit_start = time.perf_counter()
    trainer._train_epoch(_FirstBatches(train_data, n), 0)
    trainer._valid_epoch(valid_data)
    s_per_batch = trainer.epoch_train_s[0] / min(n, batches_per_epoch)
    return {
        "probe": {
            "batches_timed": min(n, batches_per_epoch),
            "train_seconds": trainer.epoch_train_s[0],
            "s_per_batch": s_per_batch,
            "batches_per_epoch": batches_per_epoch,
            "valid_seconds": trainer.epoch_valid_s[0],
            "est_epoch_s": s_per_batch * batches_per_epoch + trainer.epoch_valid_s[0],
            "dataset_load_s": load_s,
        },
        "counts": counts,
    }


def state_key(model: str, data_dir: str, dataset: str, cfg: dict, time_cap_s: float | None) -> str:
    """What a saved state must match to be continued: the .inter file's bytes and the model's settings."""
    h = hashlib.sha256()
    with open(Path(data_dir) / dataset / f"{dataset}.inter", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    settings = {k: v for k, v in cfg.items() if k not in ("data_path", "checkpoint_dir")}
    h.update(json.dumps([model, dataset, settings, time_cap_s], sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_model(model: str, data_dir: str, dataset: str, seed: int, epochs: int, time_cap_s: float | None,
              overrides: dict | None = None, probe_batches: int = 0, state_dir: Path | None = None) -> dict:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    with tempfile.TemporaryDirectory(prefix="recbole-ckpt-") as ckpt:
        cfg = model_config(model, seed, ckpt, data_dir, epochs) | (overrides or {})
        key = state_key(model, data_dir, dataset, cfg, time_cap_s) if state_dir is not None else None
        if key is not None and not probe_batches:
            done = state_dir / f"{model}.result.json"
            if done.is_file():
                previous = json.loads(done.read_text())
                if previous.get("state_key") == key:
                    print(f"[recbole]   {model}: finished earlier under the same key, result reused",
                          file=sys.stderr, flush=True)
                    return previous
        config = Config(model=model, dataset=dataset, config_dict=cfg)
        init_seed(config["seed"], config["reproducibility"])
        torch.set_num_threads(1)
        init_logger(config)  # RecBole's own log file goes under ./log of the working directory
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler:
                h.setLevel(logging.WARNING)  # the terminal gets this script's one line per epoch instead
        t0 = time.perf_counter()
        data = create_dataset(config)
        n_loaded = int(data.inter_num)  # before build(): sequential datasets then turn rows into prefixes
        train_data, valid_data, test_data = data_preparation(config, data)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = _timed_trainer(get_trainer(config["MODEL_TYPE"], config["model"]), time_cap_s)(config, net)
        counts = {
            "users": int(data.user_num - 1),  # RecBole's id 0 is [PAD]
            "items": int(data.item_num - 1),
            "interactions": n_loaded,
            "rows_after_build": int(data.inter_num),  # sequential models: one row per target (n - 1 per user)
            "train_interactions": int(train_data._dataset.inter_num),
            "valid_users": int(len(valid_data._dataset.inter_feat)),
            "test_users": int(len(test_data._dataset.inter_feat)),
        }
        if probe_batches:
            return _probe(trainer, train_data, valid_data, probe_batches, counts, time.perf_counter() - t0)
        callback = None
        if key is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            last = state_dir / f"{model}.last.pth"
            trainer.train_loader = train_data
            trainer.saved_model_file = str(state_dir / f"{model}.best.pth")  # RecBole saves the best epoch here
            if last.is_file() and Path(trainer.saved_model_file).is_file() and trainer.load_state(last, key):
                print(f"[recbole]   {model}: resuming after epoch {trainer.resumed_from_epoch} (best "
                      f"{trainer.best_valid_score:.4f}, {trainer.cur_step} epochs without a better one, "
                      f"{trainer.elapsed_before:.0f}s trained before)", file=sys.stderr, flush=True)

            def callback(epoch_idx, _score):
                trainer.save_state(last, epoch_idx, key)
        load_s = time.perf_counter() - t0
        try:
            if trainer.cur_step > trainer.stopping_step:  # stopped early before the last process ended
                best_valid, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
            else:
                best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True,
                                                            show_progress=False, callback_fn=callback)
        except _TimeCap:
            best_valid, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
        train_s = load_s + trainer.elapsed()
        t_test = time.perf_counter()
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        seconds = train_s + time.perf_counter() - t_test
        epochs_run = len(trainer.epoch_train_s)
        # Converged: early stopping ended training (or a one-pass model such as Pop/ItemKNN finished its pass).
        converged = (not trainer.capped) and (epochs_run < trainer.epochs or trainer.epochs == 1)
        result = {
            "test": _to_float(test),
            "valid_best": _to_float(best_valid_result),
            "valid_best_score": float(best_valid),
            "valid_metric": config["valid_metric"],
            "epochs": epochs_run,
            "max_epochs": int(trainer.epochs),
            "best_epoch": (epochs_run - 1 - trainer.cur_step) if epochs_run else None,
            "converged": bool(converged),
            "time_capped": bool(trainer.capped),
            "time_cap_s": time_cap_s,
            "seconds": seconds,
            "train_seconds": train_s,
            "epoch_train_s": trainer.epoch_train_s,
            "epoch_valid_s": trainer.epoch_valid_s,
            "counts": counts,
            "config": {k: config[k] for k in ("train_batch_size", "stopping_step", "valid_metric", "epochs",
                                              "MAX_ITEM_LIST_LENGTH", "learning_rate", "loss_type")},
            "overrides": overrides or {},
            "resumed_after_epoch": trainer.resumed_from_epoch,
            "state_key": key,
        }
        if key is not None:  # a finished model: the next run with the same key reuses this
            done = state_dir / f"{model}.result.json"
            _write(done, result)
        return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="folder holding <dataset>/<dataset>.inter")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", nargs="+", default=["Pop", "ItemKNN", "BPR", "GRU4Rec", "SASRec", "BERT4Rec"])
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--time-cap-s", type=float, default=None)
    ap.add_argument("--override", default=None, help="JSON dict of RecBole settings applied over these defaults")
    ap.add_argument("--probe-batches", type=int, default=0,
                    help="only time this many training batches and one validation pass (no test, no JSON metrics)")
    ap.add_argument("--state-dir", default=None,
                    help="keep per-epoch training state here and continue from it (see the module docstring)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    overrides = json.loads(args.override) if args.override else None
    # RecBole's Config also parses sys.argv (`--key=value` overrides any setting): give it nothing to read.
    sys.argv = sys.argv[:1]
    # RecBole 1.2.1 on current pandas/torch warns about its own deprecated calls on every run; they are noise here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    torch.set_num_threads(1)

    import recbole

    result = {
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dataset": args.dataset,
        "seed": args.seed,
        "models": {},
    }
    out = Path(args.out).resolve()
    data_dir = str(Path(args.data_dir).resolve())
    # RecBole writes its log files under ./log: keep them in a scratch working directory.
    with tempfile.TemporaryDirectory(prefix="recbole-run-") as work:
        os.chdir(work)
        for model in args.models:
            print(f"[recbole] {args.dataset} {model} ...", file=sys.stderr, flush=True)
            r = run_model(model, data_dir, args.dataset, args.seed, args.epochs, args.time_cap_s, overrides,
                          args.probe_batches, state_dir)
            result["models"][model] = r
            if args.probe_batches:
                p = r["probe"]
                print(f"[recbole] {args.dataset} {model}: {p['s_per_batch']:.2f} s/batch x "
                      f"{p['batches_per_epoch']} batches + valid {p['valid_seconds']:.1f}s = one epoch "
                      f"~{p['est_epoch_s']:.0f}s", file=sys.stderr, flush=True)
                _write(out, result)
                continue
            print(f"[recbole] {args.dataset} {model}: NDCG@10 {r['test'].get('NDCG@10', float('nan')):.4f} "
                  f"epochs {r['epochs']} {r['seconds']:.1f}s converged {r['converged']}", file=sys.stderr,
                  flush=True)
            _write(out, result)


def _write(out: Path, result: dict) -> None:
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
