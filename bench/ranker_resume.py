"""bench.quality's prefmine training, resumable per epoch: a run killed mid-training continues from its last epoch.

A benchmark-scale run (Beauty: up to 200 epochs on a 2-core CPU) outlives a session. Each ranker component
trains as a Ray Train run with a fixed name under `<bundle>/.train/<component>` that checkpoints after every epoch
(DeepSpeed model and optimizer shards, epoch, metrics history, best-so-far value, epoch and weights, from which the
patience counter follows), so starting the same run again makes Ray Train restore the last registered checkpoint
and train on from the next epoch. Data order and dropout are seeded per epoch (`cluster.ds_train`), so the resumed
run ends where an uninterrupted one ends. A finished component leaves `<bundle>/<component>/trained.json` and is
not trained again. The bundle directory is keyed by the data and the ranker config (bench.quality), so a resumed
run never continues one trained under other settings; without `resume` the component starts afresh.

    python -m bench.ranker_resume --data PREPARED --bundle DIR [--text VECS.npy] [--epochs 4] [--seed 1] [--resume]

trains the fused ranker (ID-only without `--text`) with the S3-Rec protocol's settings on a prepared data set and
prints its history as JSON: the resume test drives it in a process that it kills.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np


def train_component(ds, text, cfg, bundle: Path, component: str, dist, resume: bool) -> dict:
    """Train (or, with `resume`, continue or reuse) one ranker component into `<bundle>/<component>`; its
    `_train_one` summary (history, blend, ...)."""
    from cluster.train_ranker import _train_one

    bundle = Path(bundle)
    done = bundle / component / "trained.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    if not resume:  # a fresh run: no earlier checkpoint of this component may be restored
        shutil.rmtree(bundle / ".train" / component, ignore_errors=True)
        done.unlink(missing_ok=True)
    m = _train_one(ds, bundle, cfg, dist, component, text, run_name=component)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, default=float))
    os.replace(tmp, done)
    return m


def time_to_best(history: list[dict], metric: str) -> dict:
    """Best epoch by `metric` and the training + validation seconds summed over the epochs up to it (per-epoch
    times, so a run resumed after a kill counts only the work, not the gap)."""
    if not history:
        return {"best_epoch": None, "best_value": None, "seconds_to_best": None}
    best = max(history, key=lambda h: h.get(metric, -1.0))
    upto = [h for h in history if h["epoch"] <= best["epoch"]]
    return {"best_epoch": best["epoch"], "best_value": best.get(metric),
            "seconds_to_best": round(sum(h.get("epoch_seconds", 0.0) + h.get("eval_seconds", 0.0)
                                         for h in upto), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared prefmine data set (transformer_benchmark view taken)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--text", default=None, help=".npy item text vectors (fused ranker); none: ID-only")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "bench-quality-pseudonym-key")
    from bench.quality import ranker_config
    from cluster.ds_train import DistConfig
    from cluster.ray_env import ensure_ray, set_process_threads
    from prefmine.data.dataset import load_dataset
    from prefmine.data.split import transformer_benchmark_view

    set_process_threads()
    ensure_ray(num_cpus=2, dashboard=False, quiet=True)
    ds = transformer_benchmark_view(load_dataset(args.data))
    text = np.load(args.text) if args.text else None
    cfg = dataclasses.replace(ranker_config("Beauty", args.seed), epochs=args.epochs, max_epochs=args.epochs,
                              fusion="gate" if text is not None else "none", blend=False)
    dist = DistConfig(num_workers=1, log_every=10_000, checkpoint_every=1)
    m = train_component(ds, text, cfg, Path(args.bundle), "ranker", dist, args.resume)
    print(json.dumps({"history": m["history"], "model": str(Path(args.bundle) / "ranker" / "model.pt")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
