"""Benchmark: what Rank's ad auction costs the feedback store, by number of sponsored candidates.

Per Rank, prefmine.serving.ad_auction.auction reads the candidates' campaigns, the day's spend and the user's
impressions, then takes one hold per winner. This times `--rounds` auctions (a new user each, every campaign
known and funded, AdsConfig's default three slots) at each candidate count on one store: a fresh SQLite file by
default, or `--feedback` (a SQLite path or a postgresql:// DSN of an empty database). On SQLite it also counts the
statements the store ran (SQLite's own statement trace), the round trips a networked store would pay.

    python -m bench.ads_store [--feedback LOC] [--candidates 5 50 200] [--rounds 100] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan


def measure(store, n: int, rounds: int, tag: str) -> dict:
    """Mean milliseconds (and on SQLite statements) per auction with `n` sponsored candidates."""
    from prefmine.ads.campaigns import Campaign
    from prefmine.ads.config import AdsConfig
    from prefmine.serving.ad_auction import auction

    ids = [f"{tag}-{n}-{i}" for i in range(n)]
    store.ads.put_campaigns([Campaign(c, 1e9) for c in ids])
    statements: list[str] = []
    trace = getattr(getattr(store, "_db", None), "set_trace_callback", None)  # SQLite only
    if trace:
        trace(statements.append)
    rng = np.random.default_rng(n)
    auction(store.ads, f"{tag}-warm-{n}", ["i0"], ids[:1], np.ones(1), np.ones(1) * 0.1, AdsConfig(), rng,
            now=1.8e9)  # untimed: the connection and the statements' first plans
    t0 = time.perf_counter()
    for r in range(rounds):
        auction(store.ads, f"{tag}-user-{n}-{r}", [f"i{i}" for i in range(n)], ids, np.ones(n),
                rng.uniform(0.01, 0.2, n), AdsConfig(), rng, now=1.8e9 + r)
    ms = 1000 * (time.perf_counter() - t0) / rounds
    if trace:
        trace(None)
    out = {"candidates": n, "ms_per_auction": round(ms, 2)}
    if trace:
        out["statements_per_auction"] = round(len(statements) / rounds, 2)
    return out


def main(argv=None) -> int:
    from bench.data_scale import machine
    from prefmine.feedback import is_dsn, open_feedback_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "ads_store")
    ap.add_argument("--feedback", help="SQLite path or postgresql:// DSN (default: a fresh SQLite file)")
    ap.add_argument("--candidates", type=int, nargs="+", default=[5, 50, 200])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10 auctions at 5 and 50 candidates")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.candidates = 10, [5, 50]
    if a.plan:
        return print_plan("ads_store", out=a.out or (None if a.feedback else default_out("ads_store", a.quick)),
                          feedback=a.feedback or "a fresh SQLite file", candidates=a.candidates, rounds=a.rounds)
    with tempfile.TemporaryDirectory(prefix="prefmine-bench-ads-store-") as tmp:
        loc = a.feedback or str(Path(tmp) / "feedback.sqlite")
        store = open_feedback_store(loc)
        tag = f"b{time.time_ns()}"
        try:
            rows = [measure(store, n, a.rounds, tag) for n in a.candidates]
        finally:
            store.close()
    report = {"backend": "postgresql" if is_dsn(loc) else "sqlite", "rounds": a.rounds, "rows": rows,
              "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    print(json.dumps(report, indent=2))
    if a.out or not a.feedback:
        out = Path(a.out) if a.out else default_out("ads_store", a.quick)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
