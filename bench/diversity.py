"""Benchmark: what diversity costs and buys on Beauty: NDCG@10 and Recall@10 against intra-list diversity and
catalogue coverage, for every diversity setting Recommend's rules offer (issue 25, item 2).

Data, split and ranker are bench.search_relevance's: S3-Rec Beauty under the published protocol's view
(`bench.quality`), a fused prefmine ranker trained briefly on the training sequences through Ray Train +
DeepSpeed (or given with `--ranker`; the test items never enter its training), and frozen all-MiniLM-L6-v2 item
text vectors. For each sampled test user the ten items are chosen as Recommend with `Rules` chooses them:
`prefmine.rules.select` over the ranker's best `--candidates` items, the user's history excluded, with

  - diversity none: the ranker's top 10 (the reference point of the curve);
  - MMR at each `--lambdas` value over the ranker's unit item vectors (the vectors serving's MMR compares);
  - a category cap at each `--caps` value (categories as Search reads them: `prefmine.search.catalog`).

Per setting, over the sampled test users (leave-one-out: the held-out last item is the one relevant item, full
catalogue): NDCG@10 and Recall@10; intra-list diversity in two spaces, neither of them the space MMR optimises:
the mean pairwise cosine distance of the items' MiniLM text vectors, and the share of item pairs with no category
in common; and coverage@10, the distinct items recommended to all sampled users over the catalogue size.

    python -m bench.diversity [--users 3000] [--candidates 200] [--ranker-epochs 30 | --ranker DIR]
                              [--cache runs/bench/search_relevance_cache] [--out ...] [--plan]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, add_common, data_root, default_out, print_plan, require, write_results
from bench.search_relevance import NAME, SEED, given_ranker, load_view, sample_users, trained_ranker

K = 10
LAMBDAS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.3)
CAPS = (5, 3, 2, 1)


def attributes(catalog):
    """Recommend's item attributes for a search catalogue: its categories and brands; no price or stock data."""
    from prefmine.rules import ItemAttributes

    n = len(catalog)
    return ItemAttributes(item_ids=np.array([str(i) for i in range(n)]),
                          categories=[frozenset(c) for c in catalog.categories],
                          brand=np.array(catalog.brands, dtype=object), price=np.full(n, np.nan),
                          available=np.ones(n, dtype=bool), kind=np.array(["product"] * n, dtype=object))


def settings(lambdas=LAMBDAS, caps=CAPS) -> list[tuple[str, dict]]:
    """(name, Rules keyword arguments) for every point of the curve, no diversity first."""
    out = [("none", {"diversity": "none"})]
    out += [(f"mmr lambda={lam}", {"diversity": "mmr", "mmr_lambda": lam}) for lam in lambdas]
    out += [(f"category cap={c}", {"diversity": "category_cap", "category_cap": c}) for c in caps]
    return out


def category_diversity(items: np.ndarray, categories: list[frozenset]) -> float:
    """Share of the list's item pairs with no category in common (0 for fewer than two items)."""
    n = len(items)
    if n < 2:
        return 0.0
    apart = sum(not (categories[int(items[a])] & categories[int(items[b])])
                for a in range(n) for b in range(a + 1, n))
    return apart / (n * (n - 1) / 2)


def user_lists(model, ds, users: np.ndarray, candidates: int, attrs, unit_vectors: np.ndarray,
               curve: list[tuple[str, dict]]) -> dict[str, list[np.ndarray]]:
    """Every setting's top-K list for each user (test phase history, history excluded)."""
    from prefmine.ranker.task import score_histories
    from prefmine.rules import Rules, select

    lists: dict[str, list[np.ndarray]] = {name: [] for name, _ in curve}
    for start in range(0, len(users), 256):
        chunk = users[start:start + 256]
        hists = [ds.history(int(u), "test") for u in chunk]
        scores = score_histories(model, hists, model.cfg.max_len, [ds.history_times(int(u), "test") for u in chunk],
                                 [ds.history_events(int(u), "test") for u in chunk])  # the inputs serving gives
        for hist, s in zip(hists, scores):
            s = np.asarray(s, dtype=np.float64).copy()
            s[np.asarray(hist, dtype=np.int64)] = -np.inf
            cand = np.argpartition(-s, candidates)[:candidates]
            cand = cand[np.argsort(-s[cand], kind="stable")]
            for name, kw in curve:
                items, _ = select(s[cand], attrs, Rules(**kw), K, candidates=cand, item_vectors=unit_vectors,
                                  history=hist)
                lists[name].append(items)
    return lists


def score(lists: list[np.ndarray], targets: np.ndarray, text_unit: np.ndarray, categories, n_items: int) -> dict:
    from prefmine.rules import intra_list_diversity

    ndcg, recall, ild_text, ild_cat, seen = [], [], [], [], set()
    for items, t in zip(lists, targets):
        hit = np.flatnonzero(items == t)
        ndcg.append(1.0 / np.log2(hit[0] + 2) if len(hit) else 0.0)
        recall.append(float(len(hit) > 0))
        ild_text.append(intra_list_diversity(items, text_unit))
        ild_cat.append(category_diversity(items, categories))
        seen.update(int(i) for i in items)
    return {"NDCG@10": float(np.mean(ndcg)), "Recall@10": float(np.mean(recall)),
            "ILD@10 (text)": float(np.mean(ild_text)), "ILD@10 (category)": float(np.mean(ild_cat)),
            "Coverage@10": len(seen) / n_items, "list_length": float(np.mean([len(x) for x in lists]))}


def run(args) -> dict:
    from bench.data_scale import machine
    from prefmine.ranker.runtime import load_ranker, ranker_item_vectors
    from prefmine.search.catalog import Catalog

    t0 = time.time()
    cache = Path(args.cache).resolve()
    ds, text = load_view(Path(args.raw), cache)
    catalog = Catalog.from_items(ds.items)
    attrs = attributes(catalog)
    users, _ = sample_users(ds, args.users, 0, args.seed)
    targets = np.asarray(ds.targets("test"))[users]
    ranker_dir = given_ranker(Path(args.ranker), text) if args.ranker else trained_ranker(ds, text, cache,
                                                                                       args.ranker_epochs)
    model = load_ranker(ranker_dir)
    vecs = ranker_item_vectors(model).astype(np.float64)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    text_unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    curve = settings(args.lambdas, args.caps)
    t = time.time()
    lists = user_lists(model, ds, users, args.candidates, attrs, unit, curve)
    select_s = time.time() - t
    results = {name: {**score(lists[name], targets, text_unit, attrs.categories, ds.n_items), "rules": kw}
               for name, kw in curve}
    base = results["none"]
    for r in results.values():
        r["NDCG@10 change"] = r["NDCG@10"] / base["NDCG@10"] - 1 if base["NDCG@10"] else None
    return {"bench": "diversity", "dataset": NAME, "users": int(len(users)), "candidates": args.candidates,
            "catalogue_items": int(ds.n_items), "items_with_a_category": int(sum(bool(c) for c in attrs.categories)),
            "settings": results,
            "ranker": {"path": str(ranker_dir), "trained": "given with --ranker" if args.ranker else
                       f"here, {args.ranker_epochs} epochs (bench.search_relevance.trained_ranker)",
                       "config": json.loads((ranker_dir / "ranker_config.json").read_text())["config"]},
            "seconds": {"selection": round(select_s, 1), "total": round(time.time() - t0, 1)},
            "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def markdown(report: dict) -> str:
    lines = [f"# Diversity on {report['dataset']}: {report['users']} test users, top {K} of the ranker's best "
             f"{report['candidates']}", "",
             "| setting | NDCG@10 | change | Recall@10 | ILD@10 (text) | ILD@10 (category) | Coverage@10 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in report["settings"].items():
        lines.append(f"| {name} | {m['NDCG@10']:.4f} | {m['NDCG@10 change']:+.1%} | {m['Recall@10']:.4f} | "
                     f"{m['ILD@10 (text)']:.3f} | {m['ILD@10 (category)']:.3f} | {m['Coverage@10']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x_key in zip(axes, ("ILD@10 (text)", "Coverage@10")):
        for family, marker in (("mmr", "o-"), ("category cap", "s-")):
            pts = [(m[x_key], m["NDCG@10"], name.split("=")[-1]) for name, m in report["settings"].items()
                   if name.startswith(family)]
            base = report["settings"]["none"]
            pts = [(base[x_key], base["NDCG@10"], "none")] + pts
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=family)
            for x, y, lab in pts:
                ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(x_key)
        ax.set_ylabel("NDCG@10")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Diversity against accuracy on {report['dataset']} ({report['users']} test users)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p, "diversity")
    p.add_argument("--raw", default=str(data_root()))
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "search_relevance_cache"))
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--candidates", type=int, default=200, help="the ranker's best items each selection starts from")
    p.add_argument("--ranker-epochs", type=int, default=30)
    p.add_argument("--ranker", default=None, help="a fused ranker folder already trained on this split")
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    p.add_argument("--caps", type=int, nargs="+", default=list(CAPS))
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--quick", action="store_true", help="smoke run: 300 users")
    args = p.parse_args(argv)
    if args.quick:
        args.users = 300
    out = Path(args.out) if args.out else default_out("diversity", args.quick)
    require([Path(args.raw) / "seqrec" / NAME])
    if args.plan:
        return print_plan("diversity", **{k: v for k, v in vars(args).items() if k not in ("plan", "out")}, out=out)
    report = run(args)
    write_results(out, report, markdown(report))
    plot(report, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
