"""Benchmark: how well Search finds a known item on Beauty: BM25 alone, dense alone, their fusion, and the fusion
personalised by the user's history.

The labelled set is built from the real data (S3-Rec Beauty, `$PREFMINE_DATA_DIR/seqrec/Beauty`, seen under the
published protocol's view as in `bench.quality`): for each sampled test user the relevant item is the user's
held-out (last) item, and the query is written from that item's catalogue fields the way a shopper might type it:
its brand (when known), its most specific category name, and two words drawn at random (seeded per user) from its
title, leaving out stop words, numbers, words shorter than three letters and words already in the brand or
category. The item's full title is never the query: items whose title offers fewer than three such words are
skipped, so at most two of at least three distinctive title words appear. Exactly one item is relevant per query
(many items share a brand and category; the title words tell them apart, but only partly). The same construction
over a disjoint sample of users with their validation (second-to-last) item as the target forms the validation
queries, on which the fusion (linear mix or RRF, and its weight) and the personalisation weight are chosen; the
reported figures are on the test queries only.

What is compared, on the same queries:
  - lexical: BM25 (bm25s) over title, brand and category names, full ranking over the catalogue (an item no
    query word matches is never retrieved);
  - dense: cosine between frozen all-MiniLM-L6-v2 vectors of the query and of each item's text (title and
    attribute names), full ranking;
  - hybrid (linear / rrf): `prefmine.search` pools the top 200 of each, fuses them with the weight chosen on
    validation; `hybrid` is the better of the two on validation;
  - hybrid + personal (ranker): the hybrid mixed with a real prefmine fused ranker's scores for the user's
    history (trained here on the training sequences for `--ranker-epochs` epochs through Ray Train + DeepSpeed,
    or given with `--ranker`, checked to rank this catalogue; the test item is never in its training data); hybrid + personal (history similarity): the same with the
    mean cosine between the item and the user's history items in the MiniLM space instead of a ranker.

    python -m bench.search_relevance [--users 2000] [--valid-users 1000] [--ranker-epochs 2 | --ranker DIR | --no-ranker]
                                     [--cache runs/bench/search_relevance_cache] [--quick] [--out ...] [--plan]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, add_common, data_root, default_out, print_plan, require, write_results

NAME = "Beauty"
SEED = 2020
TITLE_WORDS = 2
FIELDS = ("brand", "category", "title")
WORD = re.compile(r"[A-Za-z][A-Za-z'\-]{2,}")


def load_view(raw_root: Path, cache: Path):
    """Beauty prepared once into the cache (prefmine data prepare --source seqrec), seen under the published
    protocol's view (bench.quality), and its frozen all-MiniLM-L6-v2 item vectors."""
    from bench.quality import item_text_vectors, prepare_dataset
    from prefmine.data.dataset import load_dataset
    from prefmine.data.split import transformer_benchmark_view

    os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "bench-quality-pseudonym-key")  # bench.quality's: same ids
    ds = transformer_benchmark_view(load_dataset(prepare_dataset(NAME, raw_root, cache)))
    return ds, item_text_vectors(ds, cache)


def trained_ranker(ds, text: np.ndarray, cache: Path, epochs: int) -> Path:
    """A fused prefmine ranker trained briefly on the training sequences (`epochs` epochs, bench.quality's
    Beauty settings otherwise, no blend, Ray Train + DeepSpeed on one CPU worker); reused from the cache once
    trained. Test items never enter its training (leave-one-out), so it may personalise the test queries."""
    from bench.quality import ranker_config
    from cluster.ds_train import DistConfig
    from cluster.train_ranker import _train_one

    bundle = cache / "bundles" / f"{NAME}-seed{SEED}-e{epochs}"
    if not (bundle / "ranker" / "model.pt").is_file():
        cfg = dataclasses.replace(ranker_config(NAME, SEED), epochs=epochs, max_epochs=epochs, eval_users=2000,
                                  blend=False)
        _train_one(ds, bundle, cfg, DistConfig(num_workers=1, log_every=10_000), "ranker", text)
    return bundle / "ranker"


def given_ranker(path: Path, text: np.ndarray) -> Path:
    """An already trained fused ranker folder (model.pt, ranker_config.json, text_embeddings.npy), accepted only
    when it ranks this catalogue: same item count and the same item text vectors (so the same item order)."""
    meta = json.loads((path / "ranker_config.json").read_text())
    if int(meta["n_items"]) != len(text):
        raise SystemExit(f"error: --ranker {path} ranks {meta['n_items']} items, this catalogue has {len(text)}")
    saved = np.load(path / "text_embeddings.npy")
    if saved.shape != text.shape or not np.allclose(saved, text, atol=1e-5):
        raise SystemExit(f"error: --ranker {path} was trained with other item text vectors (another item order?)")
    return path


def make_query(catalog, item: int, rng: np.random.Generator, fields=FIELDS) -> str | None:
    """A shopper's query for `item` from `fields` (see the module docstring), or None when the item lacks one of
    them (no known brand, no category, or a title with too few words)."""
    from bm25s.stopwords import STOPWORDS_EN

    brand = catalog.brands[item]
    cats = catalog.categories[item]
    leaf = cats[-1] if cats else ""
    known = {w.casefold() for w in WORD.findall(f"{brand} {' '.join(cats)}")}
    stop = set(STOPWORDS_EN)
    words = []
    for w in WORD.findall(catalog.titles[item]):
        c = w.casefold()
        if c not in stop and c not in known and c not in {x.casefold() for x in words}:
            words.append(w)
    if ("title" in fields and len(words) <= TITLE_WORDS) or ("brand" in fields and not brand and
                                                             "title" not in fields) or not leaf:
        return None
    picked = [words[i] for i in sorted(rng.choice(len(words), TITLE_WORDS, replace=False))] if "title" in fields \
        else []
    return " ".join(x for x in ((brand if "brand" in fields else ""), leaf, *picked) if x)


def labelled_queries(ds, catalog, phase: str, users: np.ndarray, seed: int, fields=FIELDS) -> list[dict]:
    """`{"user", "item", "query", "history"}` for each user whose `phase` target yields a query."""
    targets = ds.targets(phase)
    out = []
    for u in users:
        t = int(targets[u])
        q = make_query(catalog, t, np.random.default_rng([seed, int(u)]), fields)
        if q is not None:
            out.append({"user": int(u), "item": t, "query": q, "history": ds.history(int(u), phase),
                        "times": ds.history_times(int(u), phase)})
    return out


def sample_users(ds, n_test: int, n_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint samples of test users and validation users."""
    rng = np.random.default_rng(seed)
    test = rng.permutation(ds.eval_users("test"))[:n_test]
    rest = np.setdiff1d(ds.eval_users("valid"), test)
    return np.sort(test), np.sort(rng.permutation(rest)[:n_valid])


@functools.lru_cache(maxsize=1)
def _minilm():
    """MiniLM's tokenizer and model, loaded once per process (a bench embeds items, then queries)."""
    from prefmine.text.checkpoint import resolve_init
    from prefmine.text.runtime import load_encoder

    return load_encoder(resolve_init("minilm").path)


def embed(texts: list[str]) -> np.ndarray:
    from prefmine.text.encoder import embed_texts

    tokenizer, bert = _minilm()
    return np.asarray(embed_texts(bert, tokenizer, list(texts), 128), dtype=np.float32)


def full_rank(scores: np.ndarray, target: int, need_positive: bool) -> int | None:
    """Rank of `target` in a full ranking (ties by index); None when it scores 0 and `need_positive`."""
    s = scores[target]
    if need_positive and s <= 0:
        return None
    return int(np.sum(scores > s) + np.sum(scores[:target] == s) + 1)


def history_similarity(unit_items: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Mean cosine of every item to the user's history items (MiniLM space)."""
    if len(history) == 0:
        return np.zeros(len(unit_items), dtype=np.float32)
    return unit_items @ unit_items[np.asarray(history, dtype=np.int64)].mean(axis=0)


def ranker_scores(ranker_dir: Path, queries: list[dict]) -> list[np.ndarray]:
    """The trained ranker's score of every item for each query's user history (with its event times)."""
    from prefmine.ranker.runtime import load_ranker
    from prefmine.ranker.task import score_histories

    model = load_ranker(ranker_dir)
    out = []
    for i in range(0, len(queries), 256):
        chunk = queries[i:i + 256]
        out.extend(score_histories(model, [q["history"] for q in chunk], model.cfg.max_len,
                                   [q["times"] for q in chunk]))
    return out


def evaluate(searcher, queries: list[dict], qvecs: np.ndarray, personal: dict[str, list[np.ndarray]]):
    """Pools and the full-ranking ranks of lexical and dense alone for each query."""
    from prefmine.search.tune import metrics

    pools, lex_ranks, dense_ranks = [], [], []
    for q, v in zip(queries, qvecs):
        lex = searcher.lexical.scores(q["query"])
        dense = searcher.unit @ (v / max(float(np.linalg.norm(v)), 1e-12))
        lex_ranks.append(full_rank(lex, q["item"], True))
        dense_ranks.append(full_rank(dense, q["item"], False))
        pools.append(searcher.retrieve(q["query"], v, 10, lexical_scores=lex))
    pers = {name: [s[p.idx] for s, p in zip(scores, pools)] for name, scores in personal.items()}
    return pools, metrics(lex_ranks), metrics(dense_ranks), pers


def run(args) -> dict:
    from bench.data_scale import machine
    from prefmine.search import SearchConfig, Searcher
    from prefmine.search.catalog import Catalog
    from prefmine.search.engine import save_index
    from prefmine.search.tune import choose_weights, score_pools

    t0 = time.time()
    cache = Path(args.cache).resolve()
    ds, text = load_view(Path(args.raw), cache)
    catalog = Catalog.from_items(ds.items)
    t = time.time()
    index_dir = save_index(cache / "search", catalog)
    searcher = Searcher.load(index_dir, catalog, text)
    index_s = time.time() - t
    test_users, valid_users = sample_users(ds, args.users, args.valid_users, args.seed)
    fields = tuple(args.query_fields.split(","))
    test_q = labelled_queries(ds, catalog, "test", test_users, args.seed, fields)
    valid_q = labelled_queries(ds, catalog, "valid", valid_users, args.seed, fields)
    t = time.time()
    vecs = embed([q["query"] for q in valid_q + test_q])
    embed_s = time.time() - t
    valid_v, test_v = vecs[:len(valid_q)], vecs[len(valid_q):]
    ranker_dir, personal_src = None, {}
    if args.ranker:
        ranker_dir = given_ranker(Path(args.ranker), text)
    elif not args.no_ranker:
        ranker_dir = trained_ranker(ds, text, cache, args.ranker_epochs)
    results = {}
    configs = {}
    per_phase = {}
    for phase, qs, vs in (("valid", valid_q, valid_v), ("test", test_q, test_v)):
        personal_src = {"history": [history_similarity(searcher.unit, q["history"]) for q in qs]}
        if ranker_dir is not None:
            personal_src["ranker"] = ranker_scores(ranker_dir, qs)
        per_phase[phase] = evaluate(searcher, qs, vs, personal_src)
    pools, _, _, pers = per_phase["valid"]
    targets = [q["item"] for q in valid_q]
    base = SearchConfig()
    tried = {}
    for fusion in ("linear", "rrf"):
        configs[f"hybrid ({fusion})"], tried[fusion] = choose_weights(pools, targets, base, fusions=(fusion,))
    hybrid = max((configs["hybrid (linear)"], configs["hybrid (rrf)"]),
                 key=lambda c: score_pools(pools, targets, c)["NDCG@10"])
    configs["hybrid"] = hybrid
    for name in pers:  # the same fusion grid finds the hybrid's weight again; then the personal weight on top
        configs[f"hybrid + personal ({name})"], grid = choose_weights(pools, targets, hybrid, pers[name],
                                                                      fusions=(hybrid.fusion,))
        tried[f"personal {name}"] = [r for r in grid if r["personal_weight"] > 0]
    pools, lex_m, dense_m, pers = per_phase["test"]
    targets = [q["item"] for q in test_q]
    results["lexical (BM25)"] = lex_m
    results["dense (MiniLM)"] = dense_m
    for name, cfg in configs.items():
        source = next((s for s in pers if f"({s})" in name and "personal" in name), None)
        results[name] = {**score_pools(pools, targets, cfg, pers.get(source) if source else None),
                         "fusion": cfg.fusion, "lexical_weight": cfg.lexical_weight,
                         "personal_weight": cfg.personal_weight}
    for name in pers:  # the personal scores alone, ranking the same pools (no query weight)
        results[f"personal alone ({name}, pool)"] = score_pools(
            pools, targets, dataclasses.replace(hybrid, personal_weight=1.0), pers[name])
    return {
        "bench": "search_relevance", "dataset": NAME, "models": results,
        "labelled_set": {"query_fields": list(fields), "test_queries": len(test_q), "valid_queries": len(valid_q), "users_sampled": args.users,
                         "valid_users_sampled": args.valid_users, "seed": args.seed,
                         "examples": [{"query": q["query"], "title": catalog.titles[q["item"]]} for q in test_q[:8]]},
        "catalogue_items": len(catalog), "candidates_per_retriever": base.candidates,
        "personalisation": {"ranker": None if ranker_dir is None else {
                                "path": str(ranker_dir), "config": json.loads(
                                    (ranker_dir / "ranker_config.json").read_text())["config"],
                                "trained": "given with --ranker" if args.ranker else "here"},
                            "history": "mean MiniLM cosine to the user's history items"},
        "validation_grid": tried,
        "seconds": {"index_build": round(index_s, 1), "embed_queries": round(embed_s, 1),
                    "total": round(time.time() - t0, 1)},
        "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(report: dict) -> str:
    lines = [f"# Search relevance on {report['dataset']}: queries of {'+'.join(report['labelled_set']['query_fields'])}"
             f" ({report['labelled_set']['test_queries']} test queries; "
             f"weights chosen on {report['labelled_set']['valid_queries']} validation queries)", "",
             "| method | NDCG@10 | Recall@10 | fusion | lexical weight | personal weight |",
             "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['NDCG@10']:.4f} | {m['Recall@10']:.4f} | {m.get('fusion', '')} | "
                     f"{m.get('lexical_weight', '')} | {m.get('personal_weight', '')} |")
    lines += ["", "Example queries (query → the held-out item's title):", ""]
    lines += [f"- `{e['query']}` → {e['title']}" for e in report["labelled_set"]["examples"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p, "search_relevance")
    p.add_argument("--raw", default=str(data_root()))
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "search_relevance_cache"))
    p.add_argument("--users", type=int, default=2000, help="test users sampled (queries: those with a query)")
    p.add_argument("--valid-users", type=int, default=1000, help="validation users sampled, disjoint from them")
    p.add_argument("--ranker-epochs", type=int, default=2)
    p.add_argument("--no-ranker", action="store_true", help="personalise by history similarity only")
    p.add_argument("--ranker", default=None,
                   help="a fused ranker folder already trained on this split (e.g. a bench.quality seed's "
                        "bundles/Beauty/seed2020/ranker) instead of training one")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--query-fields", default=",".join(FIELDS),
                   help="what a query is made of, a subset of brand,category,title (category always); "
                        "brand,category: ambiguous queries (a brand's items in one category), where the user's "
                        "history has to decide")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 + 100 users, no ranker")
    args = p.parse_args(argv)
    if not {"category"} <= set(args.query_fields.split(",")) <= set(FIELDS):
        p.error(f"--query-fields: a subset of {','.join(FIELDS)} that includes category")
    if args.quick:
        args.users, args.valid_users, args.no_ranker = 200, 100, True
    out = Path(args.out) if args.out else default_out("search_relevance", args.quick)
    seq = Path(args.raw) / "seqrec" / NAME
    if args.plan:
        require([seq / f"{NAME}.txt", seq / f"{NAME}_item_text.tsv"])
        return print_plan("search_relevance", raw=args.raw, cache=args.cache, users=args.users,
                          valid_users=args.valid_users, ranker_epochs=None if args.no_ranker else args.ranker_epochs,
                          seed=args.seed, query_fields=args.query_fields, ranker=args.ranker, out=str(out))
    require([seq / f"{NAME}.txt"])
    from cluster.ray_env import ensure_ray, set_process_threads

    set_process_threads()
    if not args.no_ranker and not args.ranker:
        ensure_ray(num_cpus=2, dashboard=False, quiet=True)
    report = run(args)
    write_results(out, report, markdown(report))
    print(f"[search_relevance] wrote {out} and {out.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
