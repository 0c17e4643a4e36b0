"""Benchmark helper: test metrics of one already trained fused ranker on an S3-Rec set (Beauty by default) under
the published protocol's view, beside popularity, item-kNN and the published anchors.

For a ranker trained outside `bench.quality`'s full early-stopping runs (e.g. the 30-epoch ranker
`bench.diversity` trains), to see where it stands without waiting for those runs: every kept test user
(leave-one-out, the test item's pair dropped when the item never occurs in training: 22,311 users on Beauty),
full ranking over the catalogue with history excluded, the ranker fed each user's items, event types and times
as serving feeds it, no blend; `prefmine.evaluate`'s metrics. It does not replace the protocol's run: the
ranker's epoch was chosen however it was trained (say how in the report's `--note`).

    python -m bench.seqrec_check --bundle runs/bench/search_relevance_cache/bundles/Beauty-seed2020-e30 \
        [--cache runs/bench/search_relevance_cache] [--out runs/bench/seqrec_check.json] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, data_root, require
from bench.search_relevance import NAME, load_view


def run(args) -> dict:
    from bench.data_scale import machine
    from bench.quality import PUBLISHED
    from prefmine.baselines import ItemKNN, Popularity
    from prefmine.evaluate import _metrics
    from prefmine.metrics import top_k
    from prefmine.ranker.runtime import RankerRuntime

    ds, _ = load_view(Path(args.raw), Path(args.cache).resolve())
    users = ds.eval_users("test")
    hist = [ds.history(u, "test") for u in users]
    times = [ds.history_times(u, "test") for u in users]
    events = [ds.history_events(u, "test") for u in users]
    targets = ds.targets("test")[users]
    exclude = [set(h.tolist()) for h in hist]
    ranker = RankerRuntime(args.bundle, "ranker", blend=False)
    pop, knn = Popularity(ds.n_items, ds.train_seqs), ItemKNN(ds.n_items, ds.train_seqs)
    models = {}
    for name, score in (("prefmine (fused, no blend)", ranker.scores),
                        ("popularity", lambda h, t, e: pop.scores(h)), ("item_knn", lambda h, t, e: knn.scores(h))):
        t0 = time.time()
        tops = [top_k(score(hist[i:i + 1024], times[i:i + 1024], events[i:i + 1024]), 20, exclude[i:i + 1024])
                for i in range(0, len(users), 1024)]
        models[name] = {**_metrics(np.concatenate(tops), targets, ds.n_items), "seconds": round(time.time() - t0, 1)}
    meta = json.loads((Path(args.bundle) / "ranker" / "ranker_config.json").read_text())
    return {"bench": "seqrec_check", "dataset": NAME, "test_users": int(len(users)), "n_items": int(ds.n_items),
            "bundle": str(args.bundle), "ranker_config": meta.get("config"), "note": args.note,
            "models": models, "published": PUBLISHED.get(NAME, {}),
            "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="a folder holding ranker/ (model.pt, ranker_config.json)")
    p.add_argument("--raw", default=str(data_root()))
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "search_relevance_cache"))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "seqrec_check.json"))
    p.add_argument("--note", default="", help="how the ranker was trained and its epoch chosen")
    args = p.parse_args(argv)
    require([Path(args.raw) / "seqrec" / NAME, Path(args.bundle) / "ranker" / "model.pt"])
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, m in report["models"].items():
        print(f"{name:<28} NDCG@10 {m['NDCG@10']:.4f}  Recall@10 {m['Recall@10']:.4f}", flush=True)
    for name, m in report["published"].items():
        print(f"{'published ' + name:<28} NDCG@10 {m['NDCG@10']:.4f}  Recall@10 {m['Recall@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
