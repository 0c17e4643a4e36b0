"""Ranker job: the fused (ID + text) sequential ranker and its ID-only variant, on Ray Train + DeepSpeed.

Reads item text embeddings from `<bundle>/encoder/item_embeddings.npy`; writes `<bundle>/ranker/` (fused) and
`<bundle>/ranker_id_only/` (baseline), each with model.pt, ranker_config.json, for the fused model the frozen
text embeddings it was trained with, and, for catalogues of `RetrievalConfig.exact_below` items (50k) or more,
the serving index of its item vectors (item_index.faiss + item_index.json, see prefmine.ranker.retrieval), so
RankerRuntime need not build one at load; and beside it `ranker/search/`, Search's BM25 index over the bundle's
catalogue (prefmine.search.bundle), which makes served Search hybrid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from cluster.ds_train import DistConfig, run_storage, train
from prefmine import config as C
from prefmine import train_config
from prefmine.bundle import update_manifest
from prefmine.data.dataset import Dataset, load_dataset
from prefmine.ranker.blend import fit_blend
from prefmine.ranker.model import RankerConfig
from prefmine.ranker.retrieval import RetrievalConfig, save_retrieval_index
from prefmine.ranker.runtime import save_ranker
from prefmine.ranker.task import RankerTask
from prefmine.search.bundle import save_bundle_index
from prefmine.search.config import SearchConfig


def _train_one(ds: Dataset, bundle: Path, cfg: RankerConfig, dist: DistConfig, component: str,
               text: np.ndarray | None, run_name: str | None = None, retrieval: RetrievalConfig | None = None) -> dict:
    """Train one ranker component into `<bundle>/<component>`. The Ray Train run is `<bundle>/.train/<run_name>`
    (default: the component and a timestamp, a fresh run): a fixed `run_name` whose directory holds a checkpoint
    continues from its last checkpointed epoch (Ray Train restores a run of the same name and storage)."""
    vu = ds.eval_users("valid")
    if len(vu) > cfg.eval_users:
        vu = np.random.default_rng(cfg.seed).choice(vu, cfg.eval_users, replace=False)
    task = RankerTask(cfg, ds.n_items, ds.train_seqs, ds.train_events, text,
                      [ds.history(u, "valid") for u in vu], ds.valid_item[vu],
                      ds.train_times, [ds.history_times(u, "valid") for u in vu],
                      [ds.history_events(u, "valid") for u in vu])
    name = run_name or f"{component}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = train(task, name, run_storage(bundle, dist), dist, Path(bundle) / ".train")
    out = save_ranker(Path(bundle) / component, res.state_dict_path, cfg, ds.n_items, text)
    valid = ([ds.history(u, "valid") for u in vu], [ds.history_times(u, "valid") for u in vu], ds.valid_item[vu],
             [ds.history_events(u, "valid") for u in vu])
    return {"history": res.history, "seconds": res.seconds, "windows": int(len(task.x)),
            "retrieval": save_retrieval_index(out, retrieval),
            "blend": fit_blend(out, ds, cfg, text, *valid) if cfg.blend else None}


def train_ranker(ds: Dataset, bundle: Path, cfg: RankerConfig, dist: DistConfig, id_only: bool = True,
                 retrieval: RetrievalConfig | None = None, search: SearchConfig | None = None) -> dict:
    emb_path = Path(bundle) / "encoder" / "item_embeddings.npy"
    text = np.load(emb_path) if emb_path.exists() else None
    if cfg.fusion == "gate" and text is None:
        raise FileNotFoundError(f"{emb_path} is missing: train the encoder first (prefmine train encoder)")
    metrics = {"ranker": _train_one(ds, bundle, cfg, dist, "ranker", text if cfg.fusion == "gate" else None,
                                    retrieval=retrieval)}
    if id_only:
        metrics["ranker_id_only"] = _train_one(ds, bundle, dataclasses.replace(cfg, fusion="none"), dist,
                                               "ranker_id_only", None, retrieval=retrieval)
    # Search's BM25 side and its config (the tree's `search` section), beside the retrieval index
    metrics["ranker"]["search_index"] = save_bundle_index(bundle, search, ds.items)  # descriptions included
    update_manifest(bundle, components={
        name: {"config": C.to_dict(cfg) if name == "ranker" else {**C.to_dict(cfg), "fusion": "none"},
               "metrics": m} for name, m in metrics.items()})
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the sequential ranker on a prepared dataset.")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree (prefmine.train_config)")
    args = p.parse_args(argv)
    tree = train_config.load(args.preset, args.config)
    ds = load_dataset(args.data)
    print(json.dumps(train_ranker(ds, Path(args.out), tree.ranker, tree.dist, retrieval=tree.retrieval,
                                  search=tree.search), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
