"""The update loop's ranker fine-tune: held-out NDCG@10 / Recall@10 of the serving ranker vs the fine-tuned one.

    python -m bench.ranker_update --bundle BUNDLE [--seeds 3] [--settings 100:3e-4 300:3e-4 100:1e-3] [--out F]

Feedback is drawn as bench/closed_loop.py draws it, without a server: every user of BUNDLE's catalogue runs one
session (prefmine.closed_loop.Population: the calibrated response model, up to `--pages` slates of 10) against
the serving ranker's order (greedy, history and the items already shown excluded), and the clicks and purchases
are written to a real SQLite FeedbackLog. The update loop's split (prefmine.update.context) holds out each user's
last new interaction; the rest joins the histories (cluster.update_policy.apply_events) and the serving ranker is
fine-tuned on them (prefmine.update.ranker.update_ranker_dir, each `steps:lr` setting) in a copy. Both rankers then
rank (the ranker's order with the blend, as serving scores candidates; history excluded) two sets of users:

  loop_held_out   the guard's held-out events: each user's last new click, from slates the serving ranker chose
                  (so the serving ranker is favoured: its own top 10 held them)
  data_next_item  each user's real last item of the data (the dataset's test item), kept out of the sessions'
                  histories and of the fine-tune: a target no served slate selected

and the paired difference per user (candidate - serving) gets a bootstrap 95% interval, the guard's rule
(prefmine.update.guard.paired_interval). The first setting is also run without the new events (`new_events`
false: the catalogue histories alone), which tells what the events add from what further training adds. Each seed draws new sessions and seeds the fine-tune. Also recorded: the
fine-tune's seconds (index rebuild included) and its training loss before and after.

`--bundle` is required (a tiny test bundle needs PREFMINE_PSEUDONYM_KEY=prefmine-test-key). Writes
bench/results/ranker_update.json; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan

TS = 1_700_000_000


def draw_feedback(bundle: Path, histories: dict[str, list[int]], item_ids: list[str], store: Path, seed: int,
                  pages: int) -> dict:
    """One session per user of `histories` against the serving ranker's order; events into a FeedbackLog."""
    from prefmine.closed_loop import Outcome, Population, PopulationConfig, Slate
    from prefmine.feedback import FeedbackEvent, FeedbackLog
    from prefmine.policy.response import load_response
    from prefmine.ranker.runtime import RankerRuntime

    pop = Population(load_response(bundle / "policy" / "response_model.npz"), item_ids, histories,
                     PopulationConfig(k=10, pages=pages))
    ranker = RankerRuntime(bundle)
    rng = np.random.default_rng(seed)
    log = FeedbackLog(store)
    clock = [TS]
    n_sessions = n_clicks = 0
    for user in pop.users:
        seen = list(histories[user])  # what the service knows: history, clicks so far; shown items excluded too
        shown: list[int] = []

        def recommend(u, k, _exclude, seen=seen, shown=shown):  # `shown` holds the session's items as indices
            top, _ = ranker.top_n([seen], k, [set(seen) | set(shown)])
            items = [int(i) for i in top[0] if i >= 0]
            shown.extend(items)
            return Slate(f"s{seed}-{clock[0]}", "greedy", [item_ids[i] for i in items])

        def feedback(u, outcome: Outcome, seen=seen):
            events = []
            for item in outcome.clicks:
                clock[0] += 1
                events.append(FeedbackEvent(u, item, "click", clock[0]))
                seen.append(item_ids.index(item))
            for item in outcome.buys:
                clock[0] += 1
                events.append(FeedbackEvent(u, item, "buy", clock[0]))
            log.append(events)

        outcomes = pop.session(user, recommend, feedback, rng)
        n_sessions += 1
        n_clicks += sum(len(o.clicks) for o in outcomes)
        clock[0] += 1
    log.close()
    return {"sessions": n_sessions, "clicks": n_clicks}


def rank_metrics(bundle_dir: Path, histories, targets) -> dict[str, np.ndarray]:
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.update.guard import held_out

    top, _ = RankerRuntime(bundle_dir).top_n(histories, 10, [list(h) for h in histories])
    return held_out([[int(i) for i in row if i >= 0] for row in top], targets, 10)


def one_seed(bundle: Path, work: Path, seed: int, pages: int, settings: list[tuple[int, float]]) -> dict:
    from cluster.update_policy import apply_events, read_events
    from prefmine.bundle import load_catalog
    from prefmine.update.context import held_out_events, held_out_ids
    from prefmine.update.guard import GuardRule, paired_interval
    from prefmine.update.ranker import RankerUpdate, update_ranker_dir

    catalog = load_catalog(bundle)
    items = catalog.items["item"].to_numpy()
    index = {str(it): i for i, it in enumerate(items)}
    # each user's real last item (the dataset's test item) is held out of everything: a target no slate chose
    full = {u: [int(i) for i in h] for u, h in catalog.histories.items()}
    test_users = [u for u, h in full.items() if len(h) >= 2]
    histories = {u: (h[:-1] if len(h) >= 2 else h) for u, h in full.items()}
    store = work / f"feedback-{seed}.sqlite"
    drawn = draw_feedback(bundle, histories, [str(i) for i in items], store, seed, pages)
    events = read_events(store, 0)
    held = held_out_ids(histories, events, index)
    users_hist, targets = held_out_events(histories, events, index)
    learned = {u: list(h) for u, h in histories.items()}
    _, counts = apply_events([e for e in events if int(e[0]) not in held], items, learned,
                             catalog.popularity.astype(np.float64), np.full(len(items), 0.5), 1.0)
    seqs = [np.asarray(h, dtype=np.int64) for h in learned.values() if len(h)]
    without = [np.asarray(h, dtype=np.int64) for h in histories.values() if len(h)]  # the ablation: no new events
    test_hist, test_targets = [histories[u] for u in test_users], [full[u][-1] for u in test_users]
    evals = {"loop_held_out": (users_hist, targets), "data_next_item": (test_hist, test_targets)}
    serving = {name: rank_metrics(bundle, *ev) for name, ev in evals.items()}
    rule = GuardRule(n_boot=1000, seed=seed)
    out = {"seed": seed, **drawn, "events": len(events), "interactions_learned": counts["interactions"],
           "users": {name: len(ev[1]) for name, ev in evals.items()},
           "serving": {name: {f"{m}@10": round(float(v.mean()), 4) for m, v in per.items()}
                       for name, per in serving.items()}, "candidates": []}
    for steps, lr, new_events in [(st, lr, True) for st, lr in settings] + [(*settings[0], False)]:
        cand = work / f"cand-{seed}-{steps}-{lr}-{new_events}"
        shutil.rmtree(cand, ignore_errors=True)
        (cand / "catalog").mkdir(parents=True)
        shutil.copytree(bundle / "ranker", cand / "ranker")
        shutil.copy(bundle / "catalog" / "popularity.npy", cand / "catalog" / "popularity.npy")
        t0 = time.perf_counter()
        rec = update_ranker_dir(cand / "ranker", seqs if new_events else without,
                                RankerUpdate(steps=steps, lr=lr, seed=seed))
        seconds = time.perf_counter() - t0
        row = {"steps": steps, "lr": lr, "new_events": new_events, "seconds": round(seconds, 2), "loss_before": rec["loss_before"],
               "loss_after": rec["loss_after"], "windows": rec["windows"]}
        for name, ev in evals.items():
            got, row[name] = rank_metrics(cand, *ev), {}
            for m in ("ndcg", "recall"):
                d = got[m] - serving[name][m]
                lo, hi = paired_interval(lambda s, d=d: float(d[s].mean()), len(d), rule)
                row[name][f"{m}@10"] = round(float(got[m].mean()), 4)
                row[name][f"{m}@10_diff"] = {"value": round(float(d.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]}
        out["candidates"].append(row)
        print(json.dumps({"seed": seed, **row}), flush=True)
        shutil.rmtree(cand, ignore_errors=True)
    return out


def parse_setting(text: str) -> tuple[int, float]:
    steps, lr = text.split(":")
    return int(steps), float(lr)


def main(argv: list[str] | None = None) -> int:
    from bench.data_scale import machine

    p = argparse.ArgumentParser(prog="python -m bench.ranker_update", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="the serving bundle (read only)")
    add_common(p, "ranker_update")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pages", type=int, default=3, help="slates per session at most")
    p.add_argument("--settings", nargs="+", type=parse_setting, default=[(100, 3e-4), (300, 3e-4), (100, 1e-3)],
                   metavar="STEPS:LR")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else default_out("ranker_update", False)
    bundle = Path(a.bundle)
    if a.plan:
        return print_plan("ranker_update", bundle=bundle, seeds=a.seeds, pages=a.pages, settings=a.settings, out=out)
    if not (bundle / "ranker" / "model.pt").is_file():
        raise SystemExit(f"error: --bundle: {bundle} holds no ranker")
    load0, t0 = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory(prefix="pm-ranker-update-") as work:
        runs = [one_seed(bundle, Path(work), seed, a.pages, a.settings) for seed in range(a.seeds)]
    result = {"bench": "ranker_update", "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "machine": {**machine(), "load_at_start": list(load0), "load_at_end": list(os.getloadavg()),
                          "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)},
              "bundle": str(bundle), "settings": [list(s) for s in a.settings], "pages": a.pages,
              "baseline": "the serving (parent) ranker on the same held-out users", "runs": runs,
              "seconds": round(time.time() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
