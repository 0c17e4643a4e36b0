"""Train RecTools' SASRec (sampled softmax) to early stopping on one split; runs in its own environment.

Started by `bench.rectools_anchor.run_rectools` inside `.venv-rectools` (RecTools 0.19.0 pins numpy<2, pandas<3
and attrs<24, which clash with prefmine's); it must not import prefmine. It reads the split bench.quality wrote:

- `train.tsv`: `user  item  ts` per row, every user's sequence except the test item, in time order (`ts` an ordinal);
  each user's last row is the validation target;
- `test_users.txt`: the users to recommend for (prefmine scores the lists with its own metrics);

and writes `--out` (JSON): for each test user the top `--k` items over the items RecTools knows from the fit data,
the user's history (train + validation items) excluded, plus the training record.

    python bench/rectools_runner.py --split DIR --out RESULT.json --state-dir DIR [--seed 2020] [--epochs 200]
                                    [--patience 50] [--k 20]

Model: the transformer_benchmark README's settings for Beauty/Sports (SASRec+SS): 64 factors, 1 block, 1 head,
dropout 0.2, session_max_len 50, sampled softmax with 256 negatives, RecTools' defaults otherwise (Adam lr 1e-3,
batch 128). Validation as transformer_benchmark's `get_val_mask_func_all`: every user's last training item is held
out and, after each epoch, ranked among all items with the rest of the user's sequence as input and its items
masked; Recall@10 over those users drives Lightning's EarlyStopping (patience 50 epochs, exactly the protocol's)
and ModelCheckpoint keeps the best epoch; at most 200 epochs.

Resumable: Lightning checkpoints the whole fit state (weights, optimizer, loop counters, early-stopping and best-
checkpoint state, this runner's epoch timings, torch's RNG state) to `<state-dir>/<key>/last.ckpt` after every
epoch, `<key>` a hash of the split files and settings; a later run with the same key continues from it
(`trainer.fit(ckpt_path=...)`), a finished run's result is reused, and a second runner on the same state waits on
its lock and then reuses the result. A resumed run is not checked to match an uninterrupted one exactly (on a
400-user slice, killed after epoch 1 and resumed, epoch 2 scored 0 hits where the uninterrupted run scored 2 of 350).
Wall time to the best validation epoch is the sum of per-epoch training + validation seconds up to it, so a kill's
gap is not counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

SETTINGS = {"n_factors": 64, "n_blocks": 1, "n_heads": 1, "dropout_rate": 0.2, "session_max_len": 50,
            "loss": "sampled_softmax", "n_negatives": 256, "lr": 1e-3, "batch_size": 128}
MONITOR = "val_recall@10"


def last_per_user(interactions: pd.DataFrame) -> np.ndarray:
    """Each user's last row by `datetime` (their validation target): transformer_benchmark's val mask, all users."""
    order = interactions.sort_values(["user_id", "datetime"], kind="stable")
    last = order.groupby("user_id").tail(1).index
    mask = np.zeros(len(interactions), dtype=bool)
    mask[interactions.index.get_indexer(last)] = True
    return mask


def _recall_callback():
    import pytorch_lightning as pl

    class ValidRecall(pl.Callback):
        """Recall@10 of the validation targets over the full catalogue, history masked; epoch timings."""

        def __init__(self):
            self.hits, self.n = 0, 0
            self.epoch_s: list[float] = []
            self.recall: list[float] = []
            self.t0 = None

        def state_dict(self):  # saved with each epoch's checkpoint, after this epoch's work
            # torch's RNG draws the shuffle and the sampled negatives; a tensor, so weights_only loading accepts it
            return {"epoch_s": self.epoch_s, "recall": self.recall, "torch_rng": torch.get_rng_state()}

        def load_state_dict(self, state):
            self.epoch_s, self.recall = list(state["epoch_s"]), list(state["recall"])
            if "torch_rng" in state:  # the next epoch's shuffle and negatives as in an uninterrupted run
                torch.set_rng_state(state["torch_rng"])

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_validation_epoch_start(self, trainer, pl_module):
            self.hits, self.n = 0, 0

        @torch.no_grad()
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            net = pl_module.torch_model
            item_embs = net.item_model.get_all_embeddings()
            state = net.encode_sessions(batch, item_embs)[:, -1:, :]
            scores = net.similarity_module(state, item_embs, None)[:, -1, :].clone()
            scores[:, 0] = -torch.inf  # padding token
            scores.scatter_(1, batch["x"].long(), -torch.inf)  # the history
            top = scores.topk(10, dim=1).indices
            self.hits += int((top == batch["y"][:, -1:]).any(dim=1).sum())
            self.n += len(top)

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            value = self.hits / max(self.n, 1)
            pl_module.log(MONITOR, value, prog_bar=False)

        def on_train_epoch_end(self, trainer, pl_module):  # after this epoch's validation
            if self.t0 is None:
                return
            self.epoch_s.append(time.perf_counter() - self.t0)
            self.recall.append(float(trainer.callback_metrics.get(MONITOR, float("nan"))))
            best = int(np.nanargmax(self.recall))
            print(f"[rectools] epoch {len(self.recall)} {self.epoch_s[-1]:.1f}s valid Recall@10 "
                  f"{self.recall[-1]:.4f} (best {self.recall[best]:.4f} at epoch {best + 1})",
                  file=sys.stderr, flush=True)

    return ValidRecall()


def state_key(split: Path, args) -> str:
    h = hashlib.sha256()
    for f in ("train.tsv", "test_users.txt"):
        h.update((split / f).read_bytes())
    h.update(json.dumps([SETTINGS, args.seed, args.epochs, args.patience], sort_keys=True).encode())
    return h.hexdigest()[:16]


def run(args) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    split, state = Path(args.split), Path(args.state_dir)
    key = state_key(split, args)
    state = state / key
    state.mkdir(parents=True, exist_ok=True)
    import fcntl

    lock = open(state / "lock", "w")  # noqa: SIM115 - held until this process exits
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second runner on the same state waits for the first, then reuses its result
    done = state / "result.json"
    if done.is_file():
        print(f"[rectools] finished earlier under key {key}: result reused", file=sys.stderr, flush=True)
        return json.loads(done.read_text())
    raw = pd.read_csv(split / "train.tsv", sep="\t")
    interactions = pd.DataFrame({Columns.User: raw["user"], Columns.Item: raw["item"], Columns.Weight: 1.0,
                                 Columns.Datetime: raw["ts"]})
    test_users = np.loadtxt(split / "test_users.txt", dtype=np.int64, ndmin=1)
    dataset = Dataset.construct(interactions)
    recall = _recall_callback()
    best_ckpt = ModelCheckpoint(dirpath=state, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
    last_ckpt = ModelCheckpoint(dirpath=state, filename="last", save_top_k=0, save_last=True)
    stop = EarlyStopping(monitor=MONITOR, mode="max", patience=args.patience)

    def trainer():
        return pl.Trainer(max_epochs=args.epochs, min_epochs=1, deterministic=True, accelerator="cpu", devices=1,
                          enable_progress_bar=False, enable_model_summary=False, logger=False,
                          num_sanity_val_steps=0, callbacks=[recall, best_ckpt, last_ckpt, stop])

    pl.seed_everything(args.seed, workers=True)
    torch.set_num_threads(1)
    model = SASRecModel(**SETTINGS, epochs=args.epochs, deterministic=True, verbose=0,
                        get_val_mask_func=last_per_user, get_trainer_func=trainer)
    # RecTools' own fit() passes no ckpt_path; this is its _fit with Lightning's resume added
    model._build_model_from_dataset(dataset)  # noqa: SLF001
    fit_trainer = model._trainer  # noqa: SLF001
    last = state / "last.ckpt"
    resumed = last.is_file()
    if resumed:
        print(f"[rectools] resuming from {last}", file=sys.stderr, flush=True)
        # its on_train_start re-draws every weight (Xavier) unless fitted, and runs after Lightning restored them
        model.lightning_model.is_fitted = True
    t0 = time.perf_counter()
    fit_trainer.fit(model.lightning_model, model.data_preparator.get_dataloader_train(),
                    model.data_preparator.get_dataloader_val(), ckpt_path=str(last) if resumed else None)
    fit_s = time.perf_counter() - t0
    best = torch.load(best_ckpt.best_model_path, map_location="cpu", weights_only=False)
    model.lightning_model.load_state_dict(best["state_dict"])
    model.fit_trainer, model.is_fitted = fit_trainer, True
    model.lightning_model.is_fitted = True
    t1 = time.perf_counter()
    reco = model.recommend(users=test_users, dataset=dataset, k=args.k, filter_viewed=True)
    reco_s = time.perf_counter() - t1
    tops = reco.sort_values([Columns.User, Columns.Rank]).groupby(Columns.User)[Columns.Item].apply(list)
    best_epoch = int(np.nanargmax(recall.recall))
    import rectools

    result = {
        "rectools": rectools.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "settings": SETTINGS, "seed": args.seed, "max_epochs": args.epochs, "patience": args.patience,
        "early_stopping": f"Lightning EarlyStopping on {MONITOR} (all users' last training item, history masked, "
                          f"full catalogue), patience {args.patience} epochs",
        "epochs": len(recall.recall), "best_epoch": best_epoch, "valid_recall@10": recall.recall,
        "best_valid_recall@10": recall.recall[best_epoch],
        "converged": bool(stop.stopped_epoch > 0 or len(recall.recall) < args.epochs),
        "epoch_seconds": [round(s, 2) for s in recall.epoch_s],
        "seconds_to_best": round(sum(recall.epoch_s[:best_epoch + 1]), 1),
        "seconds_this_process": round(fit_s, 1), "recommend_seconds": round(reco_s, 1), "resumed": resumed,
        "n_items_known": int(len(model.data_preparator.get_known_item_ids())),
        "users": [int(u) for u in tops.index], "items": [[int(i) for i in t] for t in tops.to_numpy()],
        "state_key": key,
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, done)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
