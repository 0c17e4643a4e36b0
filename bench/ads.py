"""Benchmark: sponsored slots on the simulator's click model: revenue, clicks and CTR of the calibrated GSP
against ranking by bid alone and by click probability alone; calibration error before and after.

World (all fitted on a real data set, seqrec Beauty by default: 22,363 users, 12,101 items):
  truth      the simulator's response model (prefmine.policy.response, as prefmine.policy.simulator uses it),
             fitted on each user's train sequence -> validation item; P(click on the ad in slot s) =
             attraction(ad item | user history) x position_bias(s), with its logit offset set so that the mean
             top-slot CTR of a random campaign is --target-ctr. Fatigue is left out: one page of ads per request.
  predictor  the ad system's pCTR model: the same model family fitted on different evidence (history without its
             last train item -> that item, a different seed), uncalibrated: its probabilities are on the
             1-positive-per-4-negatives scale it was fitted on.
  calibrator fitted (prefmine.ads.calibration) on simulated top-slot impressions of one half of the users,
             judged on impressions of the other half (ECE and log loss before / after, reliability PNG);
             the same check on real labels (each user's real test item against 19 random items) is reported too.
  campaigns  --campaigns synthetic campaigns, each advertising one real catalogue item (drawn by sqrt
             popularity), with a per-click bid (log-normal) and a daily budget.
  day        --requests ad requests from users of the judged half, each with --candidates campaigns drawn at
             random (targeting), --slots slots with per-slot reserves, pacing and a per-user frequency cap.

Strategies, on identical requests and identical click draws (common random numbers):
  bid_only            rank by bid, pay the next bid (GSP with every pCTR = 1)
  probability_only    rank by calibrated pCTR, pay the own bid (nothing else sets a price when bids do not rank)
  gsp_raw             rank by bid x uncalibrated pCTR, GSP prices
  gsp_calibrated      rank by bid x calibrated pCTR, GSP prices (what prefmine.ads serves)
  gsp_calibrated_unpaced  the same without pacing (throttling only once a budget is spent)
  served              gsp_calibrated through what Rank serves (prefmine.serving.ad_auction on the feedback
                      store's shared ledger, a SQLite file): holds until a click commits them or the TTL
                      (--hold-ttl-s of the simulated 86,400 s day) releases them, the cap over the day; with
                      --click-delay-median-s a click arrives that long (log-normal) after its impression, and a
                      click later than the TTL is free (its hold was released)

    python -m bench.ads [--out bench/results/ads.json] [--quick] [--plan] [--no-served]
    python -m bench.ads --hold-ttl-sweep 1800 600 300 120 60 --click-delay-median-s 10   # results/ads_hold_ttl.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, data_root, default_out, print_plan, require
from prefmine.ads.auction import AuctionResult, gsp
from prefmine.ads.budget import BudgetLedger
from prefmine.ads.calibration import ece, fit_calibrator, log_loss, reliability_png
from prefmine.ads.config import AdsConfig
from prefmine.ads.frequency import FrequencyCap
from prefmine.ads.placement import place, settle


def _bid_only(bids, pctr, reserves, quality=None) -> AuctionResult:
    return gsp(bids, np.ones_like(np.asarray(pctr, dtype=np.float64)), reserves)


def _probability_only(bids, pctr, reserves, quality=None) -> AuctionResult:
    bids, pctr = np.asarray(bids, dtype=np.float64), np.asarray(pctr, dtype=np.float64)
    idx = np.flatnonzero((bids > 0) & (pctr > 0))
    ranked = list(idx[np.lexsort((idx, -pctr[idx]))])
    winners = []
    for reserve in reserves:
        while ranked and bids[ranked[0]] < reserve:
            ranked.pop(0)
        if not ranked:
            break
        winners.append(ranked.pop(0))
    w = np.asarray(winners, dtype=np.int64)
    return AuctionResult(w, bids[w] if len(w) else np.zeros(0))


STRATEGIES = {  # name: (auction, which pCTR ranks, pacing on)
    "bid_only": (_bid_only, "calibrated", True),
    "probability_only": (_probability_only, "calibrated", True),
    "gsp_raw": (gsp, "raw", True),
    "gsp_calibrated": (gsp, "calibrated", True),
    "gsp_calibrated_unpaced": (gsp, "calibrated", False),
}


def _offset_for_rate(model, histories, users, items, target: float) -> float:
    """Logit offset that makes the mean attraction of (users[i], items[i]) equal target (bisection)."""
    lo, hi = -20.0, 10.0
    for _ in range(40):
        mid = (lo + hi) / 2
        model.logit_offset = mid
        rate = np.mean([model.attraction(histories[u], np.array([i]))[0] for u, i in zip(users, items)])
        lo, hi = (mid, hi) if rate < target else (lo, mid)
    model.logit_offset = (lo + hi) / 2
    return model.logit_offset


def _pairs_prob(model, histories, users, cands):
    """attraction for rows (users[r], cands[r, :]) -> [R, C]."""
    return np.stack([model.attraction(histories[u], c) for u, c in zip(users, cands)])


def _day(n: int, slots: int, place_one, settle_one, spent_of, budgets, truth_p, unif) -> dict:
    """One day of n requests: place_one(r) -> [(candidate column, slot, placement)], settle_one(placement,
    clicked) -> amount charged; spent_of() -> spend per campaign at the end. truth_p[r, j] = top-slot click
    probability of candidate j."""
    from prefmine.policy.response import position_bias

    imps = clicks = 0
    revenue = 0.0
    slot_clicks = np.zeros(slots)
    slot_imps = np.zeros(slots)
    by_quarter = np.zeros(4)
    t0 = time.perf_counter()
    for r in range(n):
        for k, slot, p in place_one(r):
            clicked = bool(unif[r, k] < truth_p[r, k] * position_bias(slot))
            charge = settle_one(p, clicked)
            imps += 1
            clicks += clicked
            revenue += charge
            slot_imps[slot] += 1
            slot_clicks[slot] += clicked
            by_quarter[min(3, 4 * r // n)] += charge
    spent = spent_of()
    return {"revenue": round(float(revenue), 4), "clicks": int(clicks), "impressions": int(imps),
            "ctr": round(clicks / max(imps, 1), 5), "revenue_per_1000_requests": round(1000 * revenue / n, 4),
            "fill_rate": round(imps / (n * slots), 4),
            "ctr_by_slot": [round(float(c / max(i, 1)), 5) for c, i in zip(slot_clicks, slot_imps)],
            "budget_utilisation": round(float(spent.sum() / budgets.sum()), 4),
            "campaigns_exhausted_share": round(float(np.mean(spent >= budgets - 1e-9)), 4),
            "max_spend_over_budget": round(float(np.max(spent / np.maximum(budgets, 1e-12))), 6),
            "revenue_share_by_quarter_of_day": [round(float(x / max(revenue, 1e-12)), 4) for x in by_quarter],
            "seconds": round(time.perf_counter() - t0, 2)}


def simulate(name, auction, pctr_rank, paced, day, camp_ids, bids, budgets, cfg, truth_p, unif) -> dict:
    """One day of requests under one strategy, on the in-process ledger (prefmine.ads.placement)."""
    users, cands = day["users"], day["cands"]
    n = len(users)
    ledger = BudgetLedger({c: float(b) for c, b in zip(camp_ids, budgets)},
                          tolerance=cfg.pacing_tolerance if paced else 1.0)
    freq = FrequencyCap(cfg.freq_cap, cfg.freq_window_s)
    rng = np.random.default_rng(7)

    def place_one(r):
        ids = [camp_ids[j] for j in cands[r]]
        col = {c: k for k, c in enumerate(ids)}
        return [(col[p.campaign], p.slot, p) for p in place(f"u{users[r]}", ids, bids[cands[r]], pctr_rank[r],
                                                             cfg.reserves, ledger, freq, elapsed=r / n,
                                                             now=float(r), rng=rng, auction=auction)]

    return _day(n, cfg.slots, place_one, lambda p, clicked: settle(ledger, p, clicked),
                lambda: np.array([ledger.spent(c) for c in camp_ids]), budgets, truth_p, unif)


DAY0 = 1_796_083_200.0  # a UTC midnight (2026-12-01): the served path's day and pacing follow the clock


def simulate_served(pctr_rank, day, camp_ids, camp_item_ids, bids, budgets, cfg, truth_p, unif, store_dir,
                    hold_ttl_s: float, click_delay: np.ndarray | None = None) -> dict:
    """gsp_calibrated through what Rank serves: prefmine.serving.ad_auction.auction on the feedback store's
    shared ledger (a SQLite file, durable commits), request r at DAY0 + r/n of a day, winners' prices held,
    a click committing its hold, holds released after `hold_ttl_s` (serving's TTL) otherwise.

    click_delay[r, k]: seconds between the ad's impression and its click (None: the click arrives with the
    impression). A delayed click is committed at its own time, after serving would have released the holds past
    their TTL: one later than the TTL finds its hold released and is free (`free_clicks`), revenue lost."""
    import heapq
    from dataclasses import replace

    from prefmine.ads.campaigns import Campaign
    from prefmine.feedback import open_feedback_store
    from prefmine.serving.ad_auction import auction, utc_day

    users, cands = day["users"], day["cands"]
    n = len(users)
    served_cfg = replace(cfg, freq_window_s=86_400.0, hold_ttl_s=hold_ttl_s)  # the day is 86,400 s here
    store = open_feedback_store(Path(store_dir) / "ads.sqlite")
    store.ads.put_campaigns([Campaign(c, float(b)) for c, b in zip(camp_ids, budgets)])
    rng = np.random.default_rng(7)
    ids_made = iter(range(1 << 62))
    pending: list = []  # (click time, sequence, hold) of delayed clicks
    charged: list[tuple[float, float]] = []  # (click time, amount) of every click

    def commit_until(until: float) -> None:
        while pending and pending[0][0] <= until:
            t, _, hold = heapq.heappop(pending)
            store.ads.release_expired(served_cfg.hold_ttl_s, t)  # serving releases every few seconds
            charged.append((t, store.ads.commit(*hold)))

    def place_one(r):
        now = DAY0 + 86_400.0 * r / n
        commit_until(now)
        store.ads.release_expired(served_cfg.hold_ttl_s, now)
        user = f"u{users[r]}"
        ids = [camp_ids[j] for j in cands[r]]
        items = [camp_item_ids[j] for j in cands[r]]
        got = auction(store.ads, user, items, ids, bids[cands[r]], pctr_rank[r], served_cfg, rng, now,
                      new_id=lambda: f"h{next(ids_made)}")
        return [(k, got.slot[k] - 1, ((got.hold_id[k], user, items[k]), now, r, k)) for k in sorted(got.slot)]

    def settle_one(placed, clicked):
        hold, now, r, k = placed
        if not clicked:
            return 0.0
        if click_delay is None:
            amount = store.ads.commit(*hold)
            charged.append((now, amount))
            return amount
        heapq.heappush(pending, (now + float(click_delay[r, k]), len(charged) + len(pending), hold))
        return 0.0  # charged when the click arrives (commit_until)

    def spent_of():
        commit_until(float("inf"))
        spend = store.ads.spend(camp_ids, utc_day(DAY0)[0])
        return np.array([spend[c][0] for c in camp_ids])

    try:
        res = _day(n, cfg.slots, place_one, settle_one, spent_of, budgets, truth_p, unif)
    finally:
        store.close()
    amounts = np.array([a for _, a in charged])
    revenue = float(amounts.sum())
    quarter = np.minimum(3, ((np.array([t for t, _ in charged]) - DAY0) // 21_600).astype(int).clip(0))
    res.update(revenue=round(revenue, 4), revenue_per_1000_requests=round(1000 * revenue / n, 4),
               charged_clicks=int((amounts > 0).sum()), free_clicks=int((amounts == 0).sum()),
               revenue_share_by_quarter_of_day=[round(float(amounts[quarter == q].sum() / max(revenue, 1e-12)), 4)
                                                for q in range(4)])
    return res


def run(a, seq_path: Path, png: Path) -> dict:
    from prefmine.ads.heldout import labelled_pairs, predict_pairs, read_sequences, split_last
    from prefmine.policy.response import fit_response_model, item_counts

    t_start = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    seqs, items, bad = read_sequences(seq_path)
    hist, valid, test = split_last(seqs, min_len=4)
    n_items = len(items)
    full = [np.r_[h, v] for h, v in zip(hist, valid)]  # what is known about each user on the ad day
    truth = fit_response_model(hist, valid, n_items, seed=0)
    pred = fit_response_model([h[:-1] for h in hist], np.array([h[-1] for h in hist]), n_items, seed=1)
    t_fit = time.perf_counter() - t_start

    # real held-out labels: the real test item against 19 random unseen items (history = train + validation)
    ru, rc, ry = labelled_pairs(full, test, n_items, 19, np.random.default_rng(a.seed + 1))
    rp = predict_pairs(truth, full, ru, rc)
    half = ru % 2 == 0
    real_cal = fit_calibrator(rp[half], ry[half], folds=3, seed=a.seed)
    real = {"rows_fit": int(half.sum()), "rows_judged": int((~half).sum()), "method": real_cal.method,
            "ece_before": round(ece(rp[~half], ry[~half]), 5), "ece_after": round(ece(real_cal(rp[~half]), ry[~half]), 5),
            "log_loss_before": round(log_loss(rp[~half], ry[~half]), 5),
            "log_loss_after": round(log_loss(real_cal(rp[~half]), ry[~half]), 5)}

    # campaigns over the real catalogue
    pop = item_counts(hist, n_items)
    w = np.sqrt(pop) / np.sqrt(pop).sum()
    camp_items = rng.choice(n_items, size=a.campaigns, replace=False, p=w)
    camp_ids = [f"c{j}:{items[i]}" for j, i in enumerate(camp_items)]
    bids = np.round(np.exp(rng.normal(np.log(0.5), 0.5, a.campaigns)), 3)
    budgets = np.round(rng.uniform(a.budget_low, a.budget_high, a.campaigns), 2)

    users_all = np.arange(len(full))
    cal_users, day_users = users_all[users_all % 2 == 0], users_all[users_all % 2 == 1]
    # calibrate the predictor's raw pCTR to the truth's clicks on top-slot impressions of the first half
    su = rng.choice(cal_users, a.cal_impressions)
    si = camp_items[rng.integers(0, a.campaigns, a.cal_impressions)]
    offset = _offset_for_rate(truth, full, su[:3000], si[:3000], a.target_ctr)
    truth_cal = np.array([truth.attraction(full[u], np.array([i]))[0] for u, i in zip(su, si)])
    raw_cal = np.array([pred.attraction(full[u], np.array([i]))[0] for u, i in zip(su, si)])
    clicks_cal = (rng.random(a.cal_impressions) < truth_cal).astype(float)
    cfg = AdsConfig(reserves=tuple(a.reserves), freq_cap=a.freq_cap, freq_window_s=float(a.requests),
                    pacing_tolerance=a.pacing_tolerance)
    cal = fit_calibrator(raw_cal, clicks_cal, methods=cfg.calibration_methods, folds=cfg.calibration_folds,
                         seed=a.seed)

    # the day: requests from the other half of the users
    day = {"users": rng.choice(day_users, a.requests),
           "cands": np.stack([rng.choice(a.campaigns, a.candidates, replace=False) for _ in range(a.requests)])}
    truth_p = _pairs_prob(truth, full, day["users"], camp_items[day["cands"]])
    raw_p = _pairs_prob(pred, full, day["users"], camp_items[day["cands"]])
    cal_p = cal(raw_p)
    unif = rng.random(truth_p.shape)
    # calibration judged on the day's candidates (other users): a top-slot click drawn for every candidate
    judged_clicks = (unif < truth_p).astype(float).ravel()
    calibration = {"method": cal.method, "selection": cal.selection, "rows_fit": int(a.cal_impressions),
                   "rows_judged": int(judged_clicks.size), "truth_logit_offset": round(offset, 4),
                   "judged_click_rate": round(float(judged_clicks.mean()), 5),
                   "ece_before": round(ece(raw_p.ravel(), judged_clicks, cfg.ece_bins), 5),
                   "ece_after": round(ece(cal_p.ravel(), judged_clicks, cfg.ece_bins), 5),
                   "log_loss_before": round(log_loss(raw_p.ravel(), judged_clicks), 5),
                   "log_loss_after": round(log_loss(cal_p.ravel(), judged_clicks), 5),
                   "real_heldout_labels": real}
    reliability_png(png, {"raw pCTR": (raw_p.ravel(), judged_clicks),
                          f"calibrated ({cal.method})": (cal_p.ravel(), judged_clicks)}, bins=cfg.ece_bins,
                    title="Ad click calibration on the simulator (Beauty users held out)")

    strategies = {}
    for name, (auction, which, paced) in STRATEGIES.items():
        if a.hold_ttl_sweep and name != "gsp_calibrated":
            continue  # the sweep: the served path per TTL, the in-process GSP as the reference
        strategies[name] = simulate(name, auction, cal_p if which == "calibrated" else raw_p, paced, day,
                                    camp_ids, bids, budgets, cfg, truth_p, unif)
        print(name, json.dumps({k: strategies[name][k] for k in ("revenue", "clicks", "ctr", "impressions")}),
              flush=True)
    import tempfile

    delay = None
    if a.click_delay_median_s > 0:  # log-normal delays, drawn once: every TTL sees the same clicks at the same times
        delay = np.exp(np.random.default_rng(a.seed + 2).normal(np.log(a.click_delay_median_s),
                                                                a.click_delay_sigma, truth_p.shape))
    for ttl in ([] if a.no_served else a.hold_ttl_sweep or [a.hold_ttl_s]):
        name = "served" if not a.hold_ttl_sweep else f"served_ttl_{ttl:g}s"
        with tempfile.TemporaryDirectory(prefix="prefmine-bench-ads-") as store_dir:
            strategies[name] = simulate_served(cal_p, day, camp_ids, [str(items[i]) for i in camp_items], bids,
                                               budgets, cfg, truth_p, unif, store_dir, ttl, delay)
        strategies[name]["hold_ttl_s"] = ttl
        print(name, json.dumps({k: strategies[name][k] for k in ("revenue", "clicks", "charged_clicks", "free_clicks",
                                                                 "max_spend_over_budget")}), flush=True)
    return {"data": {"sequences": str(seq_path), "users": len(full), "items": n_items, "bad_rows": bad},
            "settings": {k: v for k, v in vars(a).items() if k not in ("plan", "out")},
            "config": {"reserves": list(cfg.reserves), "pacing_tolerance": cfg.pacing_tolerance,
                       "freq_cap": cfg.freq_cap, "freq_window_requests": a.requests},
            "campaigns": {"n": a.campaigns, "bid_mean": round(float(bids.mean()), 4),
                          "budget_total": round(float(budgets.sum()), 2)},
            "calibration": calibration, "strategies": strategies, "reliability_png": str(png),
            "seconds": {"fit_models": round(t_fit, 1), "total": round(time.perf_counter() - t_start, 1)}}


def main(argv=None) -> int:
    from bench.data_scale import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "ads")
    ap.add_argument("--dataset", default="Beauty", help="seqrec data set under $PREFMINE_DATA_DIR/seqrec")
    ap.add_argument("--quick", action="store_true", help="a 2,000-request day and 5,000 calibration impressions")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--campaigns", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=20, help="campaigns targeting each request")
    ap.add_argument("--reserves", type=float, nargs="+", default=[0.05, 0.03, 0.02], help="per slot, per click")
    ap.add_argument("--budget-low", type=float, default=2.0)
    ap.add_argument("--budget-high", type=float, default=10.0)
    ap.add_argument("--freq-cap", type=int, default=2, help="impressions per user per campaign per day")
    ap.add_argument("--pacing-tolerance", type=float, default=0.05)
    ap.add_argument("--cal-impressions", type=int, default=40_000)
    ap.add_argument("--target-ctr", type=float, default=0.03, help="mean top-slot CTR of a random campaign")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hold-ttl-s", type=float, default=AdsConfig.hold_ttl_s,
                    help="served path: a hold's TTL (of an 86,400 s day; default: serving's)")
    ap.add_argument("--no-served", action="store_true", help="leave out the served path (store-backed ledger)")
    ap.add_argument("--hold-ttl-sweep", type=float, nargs="+", metavar="S",
                    help="the served path once per hold TTL (seconds of the simulated day), beside the in-process "
                         "GSP only; writes results/ads_hold_ttl.json")
    ap.add_argument("--click-delay-median-s", type=float, default=0.0,
                    help="served path: clicks arrive this long after the impression (median of a log-normal; "
                         "0: with the impression)")
    ap.add_argument("--click-delay-sigma", type=float, default=1.5, help="log-normal sigma of the click delay")
    a = ap.parse_args(argv)
    if a.quick:
        a.requests, a.cal_impressions = 2000, 5000
    out = Path(a.out) if a.out else default_out("ads_hold_ttl" if a.hold_ttl_sweep else "ads", a.quick)
    png = out.with_name(out.name.replace(".json", "") + "_reliability.png")
    seq_path = data_root() / "seqrec" / a.dataset / f"{a.dataset}.txt"
    if a.plan:
        require([seq_path])
        return print_plan("ads", inputs=[seq_path], out=out, reliability_png=png,
                          **{k: v for k, v in vars(a).items() if k not in ("plan", "out")})
    require([seq_path])
    report = run(a, seq_path, png)
    report["machine"] = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump({"calibration": {k: report["calibration"][k] for k in ("method", "ece_before", "ece_after")},
               "strategies": {k: {m: v[m] for m in ("revenue", "clicks", "ctr")}
                              for k, v in report["strategies"].items()}}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
