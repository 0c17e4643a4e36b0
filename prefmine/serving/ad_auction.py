"""Rank's ad auction against the shared ledger (prefmine.feedback.ads_ledger): which sponsored candidates may
enter, the generalised second-price auction with the per-slot reserves of AdsConfig, and a budget hold per
winner. Ray-free: the ingress calls `auction` in a worker thread with the store's ledger.

Eligibility, per sponsored candidate: its campaign is known and active ("unknown_campaign", "inactive"), has at
least the lowest reserve left of today's budget ("budget"), the user saw fewer of its ads within the window than
its cap ("frequency_cap"; the campaign's own cap, else AdsConfig.freq_cap), and pacing lets it in
("paced": prefmine.ads.budget.pacing_probability on today's committed spend against the elapsed share of the UTC
day; holds are left out: most are released unclicked, and counting them at full price made a campaign look far
ahead of its day and sit out auctions it could pay for, bench/README.md).
An erased person (on the tombstone list) is served with user "": nothing about them is written, their stored
ad impressions were made anonymous by `data forget`, and a durable count would have to link their requests again.
They are still capped: `volatile` counts their impressions in the replica's memory only (never stored, forgotten
once the window has passed), so they see at most the cap per window from each replica instead of unlimited ads.
The eligible run the GSP auction on bid (capped at what their campaign has left) x click probability. Each winner
then takes its hold in one store transaction that re-checks cap and budget, so a race another replica won leaves
the slot empty ("budget" / "frequency_cap") rather than overspending; losers are "reserve" (bid below every
slot's reserve) or "outbid".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from prefmine.ads.auction import gsp
from prefmine.ads.budget import pacing_probability
from prefmine.ads.config import AdsConfig
from prefmine.ads.frequency import FrequencyCap


@dataclass
class AdOutcome:
    """Per sponsored winner (by candidate position): its slot (1 = best), price per click and hold id; per
    sponsored candidate not shown: why."""

    slot: dict[int, int] = field(default_factory=dict)
    price: dict[int, float] = field(default_factory=dict)
    hold_id: dict[int, str] = field(default_factory=dict)
    unplaced: dict[int, str] = field(default_factory=dict)


def utc_day(now: float) -> tuple[str, float]:
    """(the UTC date of `now` as YYYY-MM-DD, the share of that day elapsed)."""
    t = datetime.fromtimestamp(now, tz=timezone.utc)
    return t.date().isoformat(), (t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6) / 86400.0


def auction(ledger, user: str, items: list[str], campaigns: list[str], bids: np.ndarray, pctr: np.ndarray,
            config: AdsConfig, rng: np.random.Generator, now: float | None = None,
            new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
            volatile: tuple[FrequencyCap, str] | None = None) -> AdOutcome:
    """One Rank's ad auction. items/campaigns/bids/pctr: per candidate ("" campaign: organic, left alone);
    user: the pseudonym ("" for an anonymous or erased person: no cap is counted or logged in the store);
    volatile: (an in-memory cap, the key to count under) for an erased person. Blocking (store I/O)."""
    now = time.time() if now is None else float(now)
    day, elapsed = utc_day(now)
    out = AdOutcome()
    sponsored = [j for j, c in enumerate(campaigns) if c]
    if not sponsored:
        return out
    ids = sorted({campaigns[j] for j in sponsored})
    known = ledger.campaigns(ids)
    spend = ledger.spend(list(known), day)
    seen = ledger.impressions(user, list(known), now - config.freq_window_s) if user else {}
    floor = min(config.reserves)
    eligible, left = [], {}
    for j in sponsored:
        c = campaigns[j]
        camp = known.get(c)
        if camp is None:
            out.unplaced[j] = "unknown_campaign"
            continue
        if not camp.active:
            out.unplaced[j] = "inactive"
            continue
        committed, held = spend[c]
        left[c] = camp.daily_budget - committed - held
        cap = config.freq_cap if camp.freq_cap is None else camp.freq_cap
        if left[c] < floor or left[c] <= 0:
            out.unplaced[j] = "budget"
        elif (user and seen.get(c, 0) >= cap) or (volatile and not volatile[0].allowed(volatile[1], c, now, cap)):
            out.unplaced[j] = "frequency_cap"
        elif rng.random() >= pacing_probability(committed, camp.daily_budget, elapsed, config.pacing_tolerance):
            out.unplaced[j] = "paced"
        else:
            eligible.append(j)
    if not eligible:
        return out
    idx = np.asarray(eligible, dtype=np.int64)
    capped = np.minimum(np.asarray(bids, np.float64)[idx], [left[campaigns[j]] for j in eligible])
    result = gsp(capped, np.asarray(pctr, np.float64)[idx], config.reserves)
    won = set()
    for slot, (w, price) in enumerate(zip(result.winners, result.prices)):
        j = int(idx[w])
        won.add(j)
        if volatile:
            camp = known[campaigns[j]]
            if not volatile[0].admit(volatile[1], campaigns[j], now,
                                     config.freq_cap if camp.freq_cap is None else camp.freq_cap):
                out.unplaced[j] = "frequency_cap"  # the same campaign won a second slot in this request
                continue
        hold_id = new_id()
        got = ledger.hold(hold_id, campaigns[j], user, items[j], float(price), day, config.freq_cap,
                          config.freq_window_s, now)
        if got == "ok":
            out.slot[j], out.price[j], out.hold_id[j] = slot + 1, float(price), hold_id
        else:
            out.unplaced[j] = got
    for w in range(len(idx)):
        j = int(idx[w])
        if j not in won:
            out.unplaced[j] = "reserve" if capped[w] < config.reserves[-1] else "outbid"
    return out
