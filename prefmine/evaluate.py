"""The evaluation protocol of DESIGN.md, for every model in a bundle and the baselines, on one split.

Leave-one-out test items; each model scores the full catalogue from the user's train + valid history; items of
that history are excluded; HR/Recall, Precision, F1, NDCG, MRR at K = 5, 10, 20 and catalogue coverage, plus
NDCG@K at every K = 1..20 (the curve prefmine.report plots; the other metrics only at the headline Ks, to keep
the JSON small). Models: popularity, item-kNN, prefmine's ID-only ranker and the full (text-fused) ranker, all on
the same users, the rankers fed each event's type and time as in training. Rendering (Markdown, JSON, PNG) lives
in prefmine.report.

``served``: what Recommend answers each test user whose history (train + valid, with event types and times) the
request carries, slate of 20: the ranker's candidates (blended), then the bundle's slate policy's order, computed
by prefmine.serving.recommend with the functions the ranker deployment calls. It differs from the ``prefmine``
row by the candidate cut and the policy's re-ordering (a greedy policy keeps the ranker's order: the same list).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefmine.baselines import ItemKNN, Popularity
from prefmine.data.dataset import Dataset
from prefmine.metrics import CURVE_KS, KS, ranking_metrics, top_k
from prefmine.ranker.runtime import RankerRuntime
from prefmine.report import HEADLINE, write_json
from prefmine.serving.history import History


def evaluate_models(ds: Dataset, bundle: str | Path | None = None, phase: str = "test",
                    max_users: int | None = None, seed: int = 0) -> dict:
    users = ds.eval_users(phase)
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    histories = [ds.history(u, phase) for u in users]
    times = [ds.history_times(u, phase) for u in users] if ds.train_times is not None else None
    events = [ds.history_events(u, phase) for u in users]
    targets = ds.targets(phase)[users]
    exclude = [set(h.tolist()) for h in histories]
    pop, knn = Popularity(ds.n_items, ds.train_seqs), ItemKNN(ds.n_items, ds.train_seqs)
    models = {"popularity": lambda h, t, e: pop.scores(h), "item_knn": lambda h, t, e: knn.scores(h)}
    served = None
    if bundle is not None:
        for name, component in (("prefmine_id_only", "ranker_id_only"), ("prefmine", "ranker")):
            if (Path(bundle) / component / "model.pt").exists():
                runtime = RankerRuntime(bundle, component)
                if runtime.blend is not None:  # the ranker alone too, so what the blend adds shows
                    models[f"{name}_no_blend"] = RankerRuntime(bundle, component, blend=False).scores
                models[name] = runtime.scores
                if component == "ranker":
                    served = runtime
    depth = max(*KS, *CURVE_KS)
    results = {}
    for name, score_fn in models.items():
        tops = []
        for i in range(0, len(users), 1024):
            chunk_times = times[i:i + 1024] if times is not None else None
            tops.append(top_k(score_fn(histories[i:i + 1024], chunk_times, events[i:i + 1024]), depth,
                              exclude[i:i + 1024]))
        top = np.concatenate(tops) if tops else np.zeros((0, depth), dtype=np.int64)
        results[name] = _metrics(top, targets, ds.n_items)
    if served is not None:
        hists = [History.of(h, e, times[j] if times is not None else None)
                 for j, (h, e) in enumerate(zip(histories, events))]
        results["served"] = _metrics(served_lists(bundle, served, hists, depth), targets, ds.n_items)
    return {"phase": phase, "users": int(len(users)), "n_items": ds.n_items,
            "dataset": {k: ds.manifest.get(k) for k in ("source", "category", "data_hash")},
            "protocol": "leave-one-out by time, full catalogue ranking, history items excluded",
            "models": results}


def _metrics(top: np.ndarray, targets: np.ndarray, n_items: int) -> dict:
    """Every metric at the headline Ks, then NDCG alone at the other Ks of the curve."""
    m = ranking_metrics(top, targets, sorted(set(KS) | set(CURVE_KS)), n_items)
    headline = {k: v for k, v in m.items() if int(k.rsplit("@", 1)[1]) in KS}
    return {**headline, **{f"NDCG@{k}": m[f"NDCG@{k}"] for k in CURVE_KS if k not in KS}}


def served_lists(bundle: str | Path, runtime: RankerRuntime, histories: list[History], k: int) -> np.ndarray:
    """[users, k] item lists as Recommend serves them (prefmine.serving.recommend: the bundle's policy, the
    service's default candidate count, one request at a time), padded with -1 where a slate is shorter; an empty
    history gets the popularity list the service answers a cold start with. A policy configured to explore
    (``serving.epsilon`` > 0) answers at random in part, so its lists are one draw of what the service may show."""
    from prefmine.serving.policy import PolicyVersion
    from prefmine.serving.recommend import popular_items, recommend_slates

    policy = PolicyVersion(str(bundle))
    warm = [j for j, h in enumerate(histories) if len(h)]
    out = np.full((len(histories), k), -1, dtype=np.int64)
    for j, slate in zip(warm, recommend_slates(runtime, policy, [histories[j] for j in warm], k)):
        out[j, :len(slate)] = slate
    cold = popular_items(runtime.popularity, k, set())
    for j in set(range(len(histories))) - set(warm):
        out[j, :len(cold)] = cold
    return out


def format_table(report: dict, keys=HEADLINE) -> str:
    lines = [f"{report.get('phase', 'test')} metrics, {report.get('users')} users, "
             f"{report.get('n_items')} items ({report.get('protocol', '')})",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    """The report as JSON at `path` (the `evaluate --json` file), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, path)
