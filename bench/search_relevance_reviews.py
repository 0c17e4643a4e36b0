"""Benchmark: how well Search finds a reviewed item from a query in the shopper's own words (Amazon 2018 reviews):
BM25 alone, dense alone, their fusion, and the fusion personalised by the user's earlier items, with paired
bootstrap intervals for the differences.

The companion of `bench.search_relevance`, whose queries are made of catalogue words (brand, category, title
words), where BM25 is close to perfect and the fusion can at best tie it. Here the queries come from the reviews.

Catalogue: every item of `meta_<Category>.json.gz` (duplicate asin rows: the first kept), read by the amazon2018
source's own reader (`prefmine.data.sources.amazon.read_metadata`: HTML stripped, an empty title replaced by brand
and leaf category: most Magazine titles are empty HTML spans, so a magazine's name is only in its description).
Search sees it as a bundle would serve it: `Catalog.from_items`, `save_index` / `Searcher.load` (BM25 via bm25s over
the config's `lexical_fields`) and frozen all-MiniLM-L6-v2 vectors of each item's `prefmine.data.clean.item_text`
(title, brand, last three categories, description: what a prepared dataset embeds). Two text choices are made on
validation (`choose`, the default for both): what BM25 indexes (`--lexical-text`: `names` = title, brand and
category names, the default config's fields, or `description` = those and the description), and what the dense
side embeds (`--dense-text`: `full` item text or `no_description`); the pair with the better hybrid NDCG@10 on the
validation queries is reported, and every pair's validation figures are in the JSON.

Labelled queries: one per review of `<Category>_5.json.gz` (the only file with review text) whose item is in the
catalogue. The query is the review's `summary`, or, when that leaves fewer than two words, the first `--text-words`
words of its `reviewText`; a star placeholder ("Five Stars", Amazon's default summary) is never a query. Removed
from it: stop words (bm25s's English list), one-letter words, repeated words, and the reviewed item's own name
words, compared case-folded, without a possessive 's and with a plural s dropped: the words of its title (unless
the title is the stand-in above, which names nothing) and brand, and, with `--name-words description_caps` (the
default), every capitalised word of its description, where the magazine's name is ("Allure is the beauty
expert ..."), so the item's name is not in its query. `--name-words title_brand` keeps to title and brand: names
written in the description then stay in some queries (the report's `by_naming` table splits the test queries by
that). A review left with fewer than two words gives no query. The relevant item is the reviewed asin, the only
relevant item of its query. The reviewers are split at random (seeded) into validation users (`--valid-share`) and
test users, disjoint: the two text choices, the fusion (linear mix or RRF) and its lexical weight, and the
personalisation weight are chosen on the validation users' queries; the figures are on the test users' only.

What is compared, on the same test queries:
  - lexical: BM25 full ranking over the catalogue (an item no query word matches is never retrieved);
  - dense: cosine of the query's and each item's MiniLM vectors, full ranking;
  - hybrid (linear / rrf), hybrid: `prefmine.search.Searcher.retrieve` (the served code) pools the top 200 of each
    and fuses them with the weight chosen on validation; `hybrid` is the better fusion on validation;
  - hybrid + personal (history): the hybrid mixed (`prefmine.search.fusion.personalise`, as served) with the mean
    MiniLM cosine between each pooled item and the items the user reviewed before this review (in this file).
    No trained ranker: the 5-core file has a few hundred users with a handful of reviews each, too thin to train
    and hold out from. Queries whose user has no earlier review get no personal signal (their order is the hybrid's).
For hybrid - lexical and hybrid - dense (and hybrid + personal - hybrid) NDCG@10: a paired percentile bootstrap
over test queries (`--boot` resamples, seeded), and the same over test users (all of a user's queries together),
since one user's queries are not independent.

    python -m bench.search_relevance_reviews [--category Magazine_Subscriptions] [--name-words description_caps|title_brand]
        [--lexical-text choose|names|description] [--dense-text choose|full|no_description] [--valid-share 0.4]
        [--boot 2000] [--max-queries N] [--catalogue-items N] [--seed 2020]
        [--cache runs/bench/search_relevance_reviews_cache] [--quick] [--out ...] [--plan]

Item vectors are cached under `--cache` by a hash of the texts; `--quick` is a smoke run on a 150-item catalogue.
`--catalogue-items N` keeps every reviewed item and a seeded sample of the others, N in all: the suite's test
(tests/test_search_reviews.py) calls `run(parse_args([...]))` on such a catalogue with the text choices fixed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, add_common, data_root, default_out, print_plan, require, write_results

CATEGORY = "Magazine_Subscriptions"
SEED = 2020
TEXT_WORDS = 12
MIN_WORDS = 2
WORD = re.compile(r"[A-Za-z][A-Za-z']*[A-Za-z]")
STARS = re.compile(r"^\s*(one|two|three|four|five)\s+stars?\s*$", re.I)
DENSE_TEXTS = ("full", "no_description")
LEXICAL_TEXTS = {"names": ("title", "brand", "categories"), "description": ("title", "brand", "categories",
                                                                            "description")}


def files(raw: Path, category: str) -> dict[str, Path]:
    folder = Path(raw) / "amazon2018" / category
    return {"reviews": folder / f"{category}_5.json.gz", "metadata": folder / f"meta_{category}.json.gz"}


def load_catalogue(meta: Path):
    """The metadata as the amazon2018 source reads it (item, title, brand, categories, description)."""
    from prefmine.data.sources.amazon import read_metadata

    return read_metadata(meta).reset_index(drop=True)


def shrink_catalogue(items, reviewed: set[str], n: int, seed: int):
    """A smaller catalogue for smoke runs: at most `n` items, the reviewed ones first (a seeded sample of them when
    they alone exceed `n`), then a seeded sample of the others, in the metadata's order."""
    is_rev = items["item"].isin(reviewed).to_numpy()
    rng = np.random.default_rng(seed)
    rev, other = np.flatnonzero(is_rev), np.flatnonzero(~is_rev)
    keep = rng.permutation(rev)[:n]
    keep = np.concatenate([keep, rng.permutation(other)[:max(0, n - len(keep))]])
    return items.iloc[np.sort(keep)].reset_index(drop=True)


def dense_texts(items, choice: str) -> list[str]:
    """Each item's encoder text: prepare's `item_text`, with or without the description."""
    from prefmine.data.clean import item_text

    return [item_text(t, b, c, d if choice == "full" else "")
            for t, b, c, d in zip(items["title"], items["brand"], items["categories"], items["description"])]


def load_reviews(path: Path) -> list[dict]:
    """The reviews as the amazon2018 source reads them: user, item, ts, summary, text (HTML stripped)."""
    from prefmine.data.rows import BadRows
    from prefmine.data.sources.amazon import JSON_NAMES, read_chunk

    out = []
    for df in read_chunk({"path": str(path), "kind": "review", "names": JSON_NAMES}, BadRows("error")):
        out.extend(df[["user", "item", "ts", "summary", "text"]].to_dict("records"))
    return out


def _norm(word: str) -> str:
    w = word.casefold()
    return w[:-2] if w.endswith("'s") else w.strip("'")


def _forms(word: str) -> set[str]:
    w = _norm(word)
    return {w, w[:-1]} if len(w) > 3 and w.endswith("s") else {w}


def own_words(title: str, brand: str, categories: list[str], description: str = "",
              names: str = "description_caps") -> set[str]:
    """The item's own name words, in every form a query word is compared in: its title and brand, and with `names`
    "description_caps" every capitalised word of its description too (where a Magazine item's name is: "Allure is
    the beauty expert..."). A title that is the source's stand-in for a missing one (brand and leaf category, as
    `read_metadata` writes it: most Magazine titles are empty HTML spans) names nothing beyond the brand, so its
    category words stay allowed."""
    stand_in = " ".join(p for p in [brand, categories[-1] if len(categories) else ""] if p)
    name = brand if title == stand_in else f"{title} {brand}"
    if names == "description_caps":
        name += " " + " ".join(w for w in WORD.findall(description or "") if w[0].isupper())
    return {f for w in WORD.findall(name) for f in _forms(w)}


def query_words(text: str, own: set[str], stop: set[str], limit: int | None = None) -> list[str]:
    words = WORD.findall(text or "")
    if limit is not None:
        words = words[:limit]
    kept, seen = [], set()
    for w in words:
        n = _norm(w)
        if len(n) < 2 or n in stop or _forms(w) & own or n in seen:
            continue
        seen.add(n)
        kept.append(w)
    return kept


def make_query(summary: str, text: str, own: set[str], text_words: int = TEXT_WORDS) -> str | None:
    """The shopper's query of one review (see the module docstring), or None."""
    from bm25s.stopwords import STOPWORDS_EN

    stop = set(STOPWORDS_EN)
    for words in (query_words(summary, own, stop), query_words(text, own, stop, text_words)):
        q = " ".join(words)
        if len(words) >= MIN_WORDS and not STARS.match(q):
            return q
    return None


def labelled_queries(items, reviews: list[dict], text_words: int = TEXT_WORDS,
                     names: str = "description_caps") -> list[dict]:
    """`{"user", "item", "query", "history", "source"}` for each review that yields a query; `item` is the catalogue
    row of the reviewed asin and `history` the rows of the items the user reviewed earlier."""
    row = {a: i for i, a in enumerate(items["item"])}
    by_user: dict[str, list[tuple[int, int]]] = {}
    for r in reviews:
        if r["item"] in row:
            by_user.setdefault(r["user"], []).append((int(r["ts"]), row[r["item"]]))
    out = []
    for r in reviews:
        if r["item"] not in row:
            continue
        i = row[r["item"]]
        own = own_words(items["title"][i], items["brand"][i], items["categories"][i], items["description"][i], names)
        q = make_query(r["summary"], r["text"], own, text_words)
        if q is None:
            continue
        history = sorted({j for ts, j in by_user[r["user"]] if ts < int(r["ts"]) and j != i})
        out.append({"user": r["user"], "item": i, "query": q, "history": history})
    return out


def names_description(query: str, description: str) -> bool:
    """Whether the query holds a capitalised word of the item's description (a name, most often: what
    `--name-words description_caps` keeps out of the queries)."""
    caps = {f for w in WORD.findall(description or "") if w[0].isupper() for f in _forms(w)}
    return any(_forms(w) & caps for w in WORD.findall(query))


def split_users(queries: list[dict], valid_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(validation queries, test queries): the users shuffled (seeded) and the first `valid_share` of them
    validation."""
    users = sorted({q["user"] for q in queries})
    perm = np.random.default_rng(seed).permutation(len(users))
    valid = {users[j] for j in perm[:int(round(valid_share * len(users)))]}
    return [q for q in queries if q["user"] in valid], [q for q in queries if q["user"] not in valid]


def item_vectors(texts: list[str], cache: Path | None) -> np.ndarray:
    """Frozen MiniLM vectors of `texts`, cached under `cache/text/<hash of the texts>.npy`."""
    from bench.search_relevance import embed

    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:20]
    path = None if cache is None else cache / "text" / f"{key}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    vecs = embed(texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return vecs


def build_searcher(items, vectors: np.ndarray, index_dir: Path, lexical_text: str = "names"):
    """Search over the catalogue as a bundle serves it: `save_index` writes the BM25 index (over the default
    lexical fields, or, with `lexical_text` "description", those and the description) and its config to
    `index_dir`, and `Searcher.load` reads them back."""
    from prefmine.search import SearchConfig, Searcher
    from prefmine.search.catalog import Catalog
    from prefmine.search.engine import save_index

    catalog = Catalog.from_items(items)
    return Searcher.load(save_index(index_dir, catalog, SearchConfig(lexical_fields=LEXICAL_TEXTS[lexical_text])),
                         catalog, vectors)


def full_rank(scores: np.ndarray, target: int, need_positive: bool) -> int | None:
    from bench.search_relevance import full_rank as rank

    return rank(scores, target, need_positive)


def evaluate(searcher, queries: list[dict], qvecs: np.ndarray) -> dict:
    """For each query: its pool (Searcher.retrieve, the served path), the full-ranking ranks of lexical and dense
    alone, and the history similarity of the pooled items."""
    from bench.search_relevance import history_similarity

    pools, lex, dense, personal = [], [], [], []
    for q, v in zip(queries, qvecs):
        scores = searcher.lexical.scores(q["query"])
        unit = v / max(float(np.linalg.norm(v)), 1e-12)
        lex.append(full_rank(scores, q["item"], True))
        dense.append(full_rank(searcher.unit @ unit, q["item"], False))
        pool = searcher.retrieve(q["query"], v, 10, lexical_scores=scores)
        pools.append(pool)
        personal.append(history_similarity(searcher.unit, q["history"])[pool.idx])
    return {"pools": pools, "lexical": lex, "dense": dense, "personal": personal,
            "targets": [q["item"] for q in queries]}


def choose(ev: dict) -> dict:
    """The fusions, the better of them and the personal weight, chosen on one phase's evaluation."""
    from prefmine.search import SearchConfig
    from prefmine.search.tune import choose_weights, score_pools

    pools, targets = ev["pools"], ev["targets"]
    out, grid = {}, {}
    for fusion in ("linear", "rrf"):
        out[f"hybrid ({fusion})"], grid[fusion] = choose_weights(pools, targets, SearchConfig(), fusions=(fusion,))
    out["hybrid"] = max((out["hybrid (linear)"], out["hybrid (rrf)"]),
                        key=lambda c: score_pools(pools, targets, c)["NDCG@10"])
    out["hybrid + personal (history)"], g = choose_weights(pools, targets, out["hybrid"], ev["personal"],
                                                           fusions=(out["hybrid"].fusion,))
    grid["personal"] = [r for r in g if r["personal_weight"] > 0]
    return {"configs": out, "grid": grid,
            "valid_hybrid_ndcg": score_pools(pools, targets, out["hybrid"])["NDCG@10"]}


def per_query(ev: dict, configs: dict) -> dict[str, list]:
    """Each method's rank of the target for every query of `ev`."""
    from prefmine.search.tune import pool_ranks

    ranks = {"lexical (BM25)": ev["lexical"], "dense (MiniLM)": ev["dense"]}
    for name, cfg in configs.items():
        ranks[name] = pool_ranks(ev["pools"], ev["targets"], cfg, ev["personal"] if "personal" in name else None)
    return ranks


def run(args) -> dict:
    from bench.data_scale import machine
    from bench.search_relevance import embed
    from prefmine.search.tune import metrics, ndcg_per_query, paired_bootstrap

    t0 = time.time()
    paths = files(Path(args.raw), args.category)
    cache = Path(args.cache).resolve()
    items = load_catalogue(paths["metadata"])
    reviews = load_reviews(paths["reviews"])
    if args.catalogue_items:
        items = shrink_catalogue(items, {r["item"] for r in reviews}, args.catalogue_items, args.seed)
    queries = labelled_queries(items, reviews, args.text_words, args.name_words)
    valid_q, test_q = split_users(queries, args.valid_share, args.seed)
    if args.max_queries:
        valid_q, test_q = valid_q[:args.max_queries], test_q[:args.max_queries]
    t = time.time()
    qvecs = embed([q["query"] for q in valid_q + test_q])
    embed_q_s = time.time() - t
    valid_v, test_v = qvecs[:len(valid_q)], qvecs[len(valid_q):]
    variants, seconds = {}, {"embed_queries": round(embed_q_s, 1)}
    for dense in (DENSE_TEXTS if args.dense_text == "choose" else (args.dense_text,)):
        t = time.time()
        vecs = item_vectors(dense_texts(items, dense), cache)
        seconds[f"item_vectors ({dense})"] = round(time.time() - t, 1)
        for lex in (tuple(LEXICAL_TEXTS) if args.lexical_text == "choose" else (args.lexical_text,)):
            name = f"lexical {lex}, dense {dense}"
            searcher = build_searcher(items, vecs, cache / "search" / f"{args.category}-{lex}", lex)
            valid = evaluate(searcher, valid_q, valid_v)
            chosen = choose(valid)
            variants[name] = {"searcher": searcher, "chosen": chosen, "lexical": lex, "dense": dense, "valid_metrics":
                              {n: metrics(r) for n, r in per_query(valid, chosen["configs"]).items()}}
    text_choice = max(variants, key=lambda c: variants[c]["chosen"]["valid_hybrid_ndcg"])  # ties: the first
    picked = variants[text_choice]
    configs = picked["chosen"]["configs"]
    test = evaluate(picked["searcher"], test_q, test_v)
    ranks = per_query(test, configs)
    results = {}
    for name, r in ranks.items():
        results[name] = metrics(r)
        if name in configs:
            c = configs[name]
            results[name].update(fusion=c.fusion, lexical_weight=c.lexical_weight, personal_weight=c.personal_weight)
    ndcg = {n: ndcg_per_query(r) for n, r in ranks.items()}
    users = [q["user"] for q in test_q]
    in_catalogue = set(items["item"])
    intervals = {}
    for a, b in (("hybrid", "lexical (BM25)"), ("hybrid", "dense (MiniLM)"), ("hybrid + personal (history)", "hybrid")):
        intervals[f"{a} - {b}"] = {
            "over queries": paired_bootstrap(ndcg[a], ndcg[b], args.boot, args.seed),
            "over users": paired_bootstrap(ndcg[a], ndcg[b], args.boot, args.seed, groups=users)}
    named = np.array([names_description(q["query"], items["description"][q["item"]]) for q in test_q])
    by_naming = {}
    for label, keep in (("queries holding a capitalised description word", named),
                        ("the other queries", ~named)):
        if keep.sum() >= 10:
            idx = np.flatnonzero(keep)
            by_naming[label] = {
                "queries": int(keep.sum()),
                "NDCG@10": {n: float(ndcg[n][idx].mean()) for n in ("lexical (BM25)", "dense (MiniLM)", "hybrid")},
                "hybrid - lexical (BM25)": paired_bootstrap(ndcg["hybrid"][idx], ndcg["lexical (BM25)"][idx],
                                                            args.boot, args.seed),
                "hybrid - dense (MiniLM)": paired_bootstrap(ndcg["hybrid"][idx], ndcg["dense (MiniLM)"][idx],
                                                            args.boot, args.seed)}
    rng = np.random.default_rng(args.seed)
    shown = sorted(rng.choice(len(test_q), min(10, len(test_q)), replace=False))
    lex_r, dense_r, hyb_r = ranks["lexical (BM25)"], ranks["dense (MiniLM)"], ranks["hybrid"]
    return {
        "bench": "search_relevance_reviews", "dataset": f"amazon2018/{args.category}", "models": results,
        "ndcg10_differences": intervals, "by_naming": by_naming,
        "texts": {"chosen": text_choice, "lexical_fields": list(LEXICAL_TEXTS[picked["lexical"]]),
                  "dense_text": picked["dense"], "by_validation_hybrid_ndcg10": {
                      c: round(v["chosen"]["valid_hybrid_ndcg"], 4) for c, v in variants.items()},
                  "validation_metrics": {c: v["valid_metrics"] for c, v in variants.items()}},
        "labelled_set": {
            "reviews": len(reviews), "reviews_of_catalogue_items": sum(r["item"] in in_catalogue for r in reviews),
            "queries": len(queries), "valid_queries": len(valid_q),
            "test_queries": len(test_q), "valid_users": len({q["user"] for q in valid_q}),
            "test_users": len(set(users)), "valid_share": args.valid_share, "seed": args.seed,
            "text_words": args.text_words, "name_words": args.name_words,
            "test_queries_with_history": sum(1 for q in test_q if q["history"]),
            "distinct_test_items": len({q["item"] for q in test_q}),
            "examples": [{"query": test_q[i]["query"], "item_title": items["title"][test_q[i]["item"]],
                          "lexical_rank": lex_r[i], "dense_rank": dense_r[i], "hybrid_rank": hyb_r[i]}
                         for i in map(int, shown)]},
        "catalogue_items": len(items), "catalogue_shrunk_to": args.catalogue_items or None, "candidates_per_retriever": configs["hybrid"].candidates,
        "validation_grid": picked["chosen"]["grid"],
        "seconds": {**seconds, "total": round(time.time() - t0, 1)},
        "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(report: dict) -> str:
    ls = report["labelled_set"]
    lines = [f"# Search relevance on {report['dataset']}: queries in the reviewers' words",
             "", f"{ls['test_queries']} test queries from {ls['test_users']} users ({ls['distinct_test_items']} "
             f"distinct items; {ls['test_queries_with_history']} with an earlier review for personalisation); "
             f"fusion, weights and texts ({report['texts']['chosen']}) chosen on "
             f"{ls['valid_queries']} validation queries from {ls['valid_users']} other users; catalogue "
             f"{report['catalogue_items']} items. BM25 indexes {', '.join(report['texts']['lexical_fields'])}; "
             f"the dense side embeds item text {report['texts']['dense_text']}.", "",
             "| method | NDCG@10 | Recall@10 | fusion | lexical weight | personal weight |",
             "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['NDCG@10']:.4f} | {m['Recall@10']:.4f} | {m.get('fusion', '')} | "
                     f"{m.get('lexical_weight', '')} | {m.get('personal_weight', '')} |")
    lines += ["", "Paired bootstrap 95% intervals of the NDCG@10 difference (test queries):", "",
              "| difference | mean | 95% CI over queries | 95% CI over users |", "|---|---|---|---|"]
    for name, d in report["ndcg10_differences"].items():
        q, u = d["over queries"], d["over users"]
        lines.append(f"| {name} | {q['mean_diff']:+.4f} | [{q['low']:+.4f}, {q['high']:+.4f}] "
                     f"({q['n_boot']} resamples of {q['units']} queries) | [{u['low']:+.4f}, {u['high']:+.4f}] "
                     f"({u['units']} users) |")
    if len(report["by_naming"]) == 2:  # with --name-words description_caps no query holds such a word
        lines += ["", "Test queries with and without a capitalised word of the item's description (most often its "
                  "name), NDCG@10 and the paired 95% interval over queries:", "",
                  "| queries | n | lexical | dense | hybrid | hybrid - lexical | hybrid - dense |",
                  "|---|---|---|---|---|---|---|"]
        for label, d in report["by_naming"].items():
            m, dl, dd = d["NDCG@10"], d["hybrid - lexical (BM25)"], d["hybrid - dense (MiniLM)"]
            lines.append(f"| {label} | {d['queries']} | {m['lexical (BM25)']:.4f} | {m['dense (MiniLM)']:.4f} | "
                         f"{m['hybrid']:.4f} | {dl['mean_diff']:+.4f} [{dl['low']:+.4f}, {dl['high']:+.4f}] | "
                         f"{dd['mean_diff']:+.4f} [{dd['low']:+.4f}, {dd['high']:+.4f}] |")
    lines += ["", "Example test queries (query → the reviewed item's title; its rank by lexical / dense / hybrid, "
              "- when not in the top 200 or not matched):", ""]
    for e in ls["examples"]:
        r = " / ".join("-" if x is None or x > 200 else str(x)
                       for x in (e["lexical_rank"], e["dense_rank"], e["hybrid_rank"]))
        lines.append(f"- `{e['query']}` → {e['item_title'][:80]} ({r})")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's settings, checked (an error exits with status 2), `--quick` expanded: what `main` and the
    suite's test (tests/test_search_reviews.py, which runs `run` in a smaller setting in process) pass to `run`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p, "search_relevance_reviews")
    p.add_argument("--raw", default=str(data_root()), help="the data folder holding amazon2018/")
    p.add_argument("--category", default=CATEGORY,
                   help="an amazon2018 category with both a 5-core reviews file and a metadata file")
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "search_relevance_reviews_cache"))
    p.add_argument("--dense-text", default="choose", choices=("choose", *DENSE_TEXTS),
                   help="the item text the dense side embeds: prepare's item text (full), the same without the "
                        "description, or both tried and the better on validation kept (choose)")
    p.add_argument("--lexical-text", default="choose", choices=("choose", *LEXICAL_TEXTS),
                   help="the fields BM25 indexes (SearchConfig.lexical_fields): title, brand and category names (the "
                        "default config's), those and the description, or both tried and the better on validation "
                        "kept (choose)")
    p.add_argument("--valid-share", type=float, default=0.4, help="share of the reviewers whose queries validate")
    p.add_argument("--text-words", type=int, default=TEXT_WORDS,
                   help="words of reviewText a query is drawn from when the summary is too short")
    p.add_argument("--name-words", default="description_caps", choices=("description_caps", "title_brand"),
                   help="the item's own words kept out of its queries: title and brand words (title_brand), and "
                        "also every capitalised word of its description, where a magazine's name is "
                        "(description_caps)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--max-queries", type=int, default=0, help="at most this many validation and test queries (0: all)")
    p.add_argument("--catalogue-items", type=int, default=0,
                   help="a smaller catalogue: at most this many items, every reviewed one first, then a seeded sample "
                        "of the others as distractors (0: all; the suite's test uses 600, --quick 150)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a 150-item catalogue, 50 validation and 50 test queries, one text choice "
                        "each, 200 resamples")
    args = p.parse_args(argv)
    if not 0.0 < args.valid_share < 1.0:
        p.error("--valid-share: between 0 and 1")
    if args.boot < 10 or args.text_words < MIN_WORDS or args.max_queries < 0 or args.catalogue_items < 0:
        p.error("--boot must be at least 10, --text-words at least 2, --max-queries and --catalogue-items 0 or more")
    if args.quick:
        args.catalogue_items, args.max_queries, args.boot = 150, 50, 200
        args.dense_text, args.lexical_text = "no_description", "names"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else default_out("search_relevance_reviews", args.quick)
    inputs = files(Path(args.raw), args.category)
    require(inputs.values())
    if args.plan:
        return print_plan("search_relevance_reviews", inputs=[str(inputs["reviews"]), str(inputs["metadata"])],
                          raw=args.raw, category=args.category, cache=args.cache, dense_text=args.dense_text,
                          lexical_text=args.lexical_text, name_words=args.name_words,
                          valid_share=args.valid_share, text_words=args.text_words, boot=args.boot,
                          max_queries=args.max_queries, catalogue_items=args.catalogue_items, seed=args.seed,
                          out=str(out))
    from cluster.ray_env import set_process_threads

    set_process_threads()
    report = run(args)
    write_results(out, report, markdown(report))
    print(f"[search_relevance_reviews] wrote {out} and {out.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
