"""Benchmark: quality of the text encoder's representations against a TF-IDF baseline, on real Amazon data.

Throughput benchmarks say how fast the encoder trains; this one says whether what it learns is worth having.
Every variant turns texts into vectors, and two measurements judge the vectors, in one run:

1. Same-category precision@10 of item neighbours (Magazine_Subscriptions and Gift_Cards metadata, per
   dataset). Item text = title + description + feature bullets (HTML stripped); neither the category field
   nor the brand is in the text, so the label cannot leak. Label = the most specific category entry (the last
   one after the root), ignoring entries that are not categories: HTML leftovers, product bullets copied into
   the category list (an entry that is also one of the item's feature bullets or that ends with a full stop).
   Items without text or label, items whose text repeats an earlier item's (the same magazine under several
   asins: a free hit for every method), and labels with fewer than 2 items, are dropped. For each item, its
   10 nearest items by cosine (itself excluded) within its own dataset; precision = share of them with the
   item's label, averaged over items. Baseline: the expected precision of random neighbours (from the label
   frequencies).
2. Rating prediction from review text: the 5-core reviews of all four categories (summary . reviewText), each
   distinct text once (the 5-core files repeat one review under every variant of a product, so without this
   most test reviews would also sit in train; the result records how many were dropped), a seeded sample,
   split 80/20.
   A linear probe (ridge, its alpha chosen on the train part by generalised cross-validation) on frozen
   vectors, predictions clipped to [1, 5]: MAE and accuracy (rounded prediction == rating). Variants that
   fine-tune a rating head also report that head's own predictions. Baselines: the constant train mean and
   the train majority rating.

Variants: `tfidf` (the baseline: L2-normalised TF-IDF), `scratch` (a tiny BERT trained here: WordPiece
tokenizer, MLM pretraining, rating fine-tuning), `minilm` (all-MiniLM-L6-v2, frozen) and `minilm_rating`
(MiniLM fully fine-tuned on review -> rating). Training runs through Ray Train + DeepSpeed
(`cluster.ds_train`, 2 CPU workers) exactly like `cluster/train_encoder.py`, and only ever sees the train part
of the reviews (the MLM corpus is the item texts plus the train reviews). `seconds` per variant is the wall
time of producing its vectors (training included, evaluation not).

    python -m bench.encoder_quality [--out RESULT.json] [--quick] [--plan] [--data DIR] [--variants ...]

`--quick` (200 items per dataset, 500 reviews, 1 epoch) is a smoke test; run times are in bench/README.md.

The parts live in `bench/encoder_eval/`: `data` (settings, items, reviews), `metrics` (the two measurements
and their baselines) and `variants` (how each variant makes its vectors; a new variant is registered there).
This module is the command line: it loads the data, runs the chosen variants and writes the JSON and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import add_common, data_root, default_out, print_plan, require
from bench.data_scale import machine
from bench.encoder_eval.data import ITEM_DATASETS, REVIEW_DATASETS, Bench, Settings, load_items, load_reviews
from bench.encoder_eval.metrics import K, VariantOutput, baselines, evaluate
from bench.encoder_eval.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def table(result: dict) -> str:
    """A compact text table of the results and baselines."""
    names = list(result["datasets"])
    head = (["variant"] + [f"P@10 {n[:12]}" for n in names]
            + ["probe MAE", "probe acc", "head MAE", "head acc", "seconds"])
    rows = [head]
    for variant, r in result["results"].items():
        rt = r["rating"]
        rows.append([variant] + [f"{r['category_precision@10'][n]:.3f}" for n in names] +
                    [f"{rt['probe_mae']:.3f}", f"{rt['probe_accuracy']:.3f}",
                     f"{rt['finetuned_head_mae']:.3f}" if "finetuned_head_mae" in rt else "-",
                     f"{rt['finetuned_head_accuracy']:.3f}" if "finetuned_head_accuracy" in rt else "-",
                     f"{r['seconds']:.0f}"])
    base = result["baselines"]
    rows.append(["random / mean"] + [f"{base['random_category_precision@10'][n]:.3f}" for n in names] +
                [f"{base['mean_rating_mae']:.3f}", f"{base['mean_rating_accuracy']:.3f}", "-", "-", "-"])
    rows.append(["majority"] + ["-" for _ in names] +
                [f"{base['majority_rating_mae']:.3f}", f"{base['majority_rating_accuracy']:.3f}"] + ["-"] * 3)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines)


def describe(b: Bench, data: Path) -> dict:
    """The `config`, `datasets` and `reviews` parts of the result."""
    import sklearn

    r = b.reviews
    config = {**dataclasses.asdict(b.settings), "data": str(data), "k": K,
              "item_datasets": list(ITEM_DATASETS), "review_datasets": list(REVIEW_DATASETS),
              "item_text": "title . description . feature (HTML stripped; no category, no brand); "
                           "each distinct text once",
              "review_text": "summary . reviewText; each distinct text once",
              "label": "last category entry below the root that is not HTML or a product bullet",
              "tfidf": "sublinear tf, min_df 2, 1-2 grams, L2",
              "probe": "sklearn RidgeCV (GCV), clipped to [1, 5]", "sklearn": sklearn.__version__}
    datasets = {n: {"items": len(s.texts), "labels": len(set(s.labels)),
                    "duplicate_texts_dropped": s.duplicates} for n, s in b.items.items()}
    test_counts = Counter(r.ratings[r.test].tolist())
    reviews = {"train": len(r.train), "test": len(r.test), "pool": r.pool,
               "duplicate_texts_dropped": r.duplicates, "by_dataset": dict(Counter(r.sources.tolist())),
               "test_rating_counts": {str(int(k)): v for k, v in sorted(test_counts.items())}}
    return {"config": config, "datasets": datasets, "reviews": reviews}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "encoder_quality")
    ap.add_argument("--quick", action="store_true",
                    help="200 items per dataset, 500 reviews, 1 epoch per stage (a smoke test)")
    ap.add_argument("--data", default=str(data_root()),
                    help="folder laid out like ../shared/data (default: $PREFMINE_DATA_DIR, else that)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=2020)
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray of known size, not a cluster someone else is using
    data, out = Path(a.data), Path(a.out) if a.out else default_out("encoder_quality", a.quick)
    s = Settings.for_run(a.quick, a.seed)
    inputs = [data / "amazon2018" / n / f"meta_{n}.json.gz" for n in ITEM_DATASETS]
    inputs += [data / "amazon2018" / n / f"{n}_5.json.gz" for n in REVIEW_DATASETS]
    require(inputs)
    if a.plan:
        return print_plan("encoder_quality", inputs=inputs, out=out, variants=a.variants,
                          settings=dataclasses.asdict(s))
    work = Path(tempfile.mkdtemp(prefix="prefmine-bench-quality-"))
    items = {n: load_items(data, n, s.max_items, s.seed) for n in ITEM_DATASETS}
    b = Bench(s, items, load_reviews(data, s), work)
    result = {"bench": "encoder_quality", "machine": machine(), **describe(b, data), "results": {},
              "baselines": baselines(b)}
    print(json.dumps({k: result[k] for k in ("datasets", "reviews")}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in a.variants:
            t = time.perf_counter()
            vectors = VariantOutput(*VARIANTS[name](b))
            seconds = time.perf_counter() - t
            result["results"][name] = {**evaluate(b, vectors), "seconds": round(seconds, 1)}
            print(f"[encoder_quality] {name}: {json.dumps(result['results'][name])}", flush=True)
            out.write_text(json.dumps(result, indent=2))  # after every variant: a late failure keeps the rest
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
