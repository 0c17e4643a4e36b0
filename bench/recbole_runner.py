"""Train and test RecBole models on one atomic dataset; runs inside the RecBole environment (`.venv-recbole`).

Started by `bench.recbole_anchor.run_recbole`; it must not import prefmine (that environment does not have it).

    python bench/recbole_runner.py --data-dir DIR --dataset NAME --models Pop SASRec --seed 2020 --out RESULT.json
                                   [--time-cap-s 300] [--epochs 300]

RecBole's defaults except: leave-one-out by time (`split: {LS: valid_and_test}`, `order: TO`), full ranking
grouped by user, no filtering (every interaction kept, duplicates included), MAX_ITEM_LIST_LENGTH 50,
train_batch_size 256, stopping_step 5, valid_metric NDCG@10, metrics Recall/NDCG/Precision/MRR/Hit at K=1..20,
sequential models with cross-entropy loss (and so no training negatives), CPU with one torch thread, checkpoints
in a temporary directory. `--time-cap-s` caps each model's training wall clock: when the cap is reached the
epoch in progress finishes (with its validation), training stops, the best checkpoint so far is tested and the
model is reported with `converged: false`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
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


def _timed_trainer(base, time_cap_s: float | None):
    """A subclass of RecBole trainer `base` that counts epochs, times them, and honours a wall-clock cap."""

    class Timed(base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.epoch_train_s: list[float] = []
            self.epoch_valid_s: list[float] = []
            self.fit_start = None
            self.capped = False

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            if self.fit_start is None:
                self.fit_start = time.perf_counter()
            elif time_cap_s is not None and time.perf_counter() - self.fit_start >= time_cap_s:
                self.capped = True
                raise _TimeCap()
            t0 = time.perf_counter()
            out = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.epoch_train_s.append(time.perf_counter() - t0)
            loss = sum(out) if isinstance(out, tuple) else out
            print(f"[recbole]   epoch {epoch_idx} train {self.epoch_train_s[-1]:.1f}s loss {float(loss):.4f} "
                  f"(elapsed {time.perf_counter() - self.fit_start:.0f}s)", file=sys.stderr, flush=True)
            return out

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


def run_model(model: str, data_dir: str, dataset: str, seed: int, epochs: int, time_cap_s: float | None,
              overrides: dict | None = None, probe_batches: int = 0) -> dict:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    with tempfile.TemporaryDirectory(prefix="recbole-ckpt-") as ckpt:
        cfg = model_config(model, seed, ckpt, data_dir, epochs) | (overrides or {})
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
        try:
            best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        except _TimeCap:
            best_valid, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
        train_s = time.perf_counter() - t0
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        seconds = time.perf_counter() - t0
        epochs_run = len(trainer.epoch_train_s)
        # Converged: early stopping ended training (or a one-pass model such as Pop/ItemKNN finished its pass).
        converged = (not trainer.capped) and (epochs_run < trainer.epochs or trainer.epochs == 1)
        return {
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
        }


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
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
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
                          args.probe_batches)
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
