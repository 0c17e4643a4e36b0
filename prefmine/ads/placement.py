"""One ad request end to end: eligibility (budget left, pacing, frequency cap), the auction, holds.

`place` filters the candidate campaigns, runs the GSP auction on bid x calibrated pCTR, then for each winner
atomically takes a frequency-cap impression and holds its price on the budget ledger; a winner that loses
either race (another request took the last impression or the last money in between) is dropped and its slot
left empty, so neither limit is ever exceeded. The caller `settle`s each placement when it knows whether the
ad was clicked (commit the price) or not (release it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefmine.ads.auction import gsp
from prefmine.ads.budget import BudgetLedger
from prefmine.ads.frequency import FrequencyCap


@dataclass(frozen=True)
class Placement:
    campaign: str
    slot: int
    price: float  # per click; held on the ledger until settled
    pctr: float  # calibrated click probability used in the auction
    bid: float


def place(user: str, campaigns: list[str], bids, pctr, reserves, ledger: BudgetLedger, freq: FrequencyCap,
          elapsed: float, now: float, rng: np.random.Generator, day=None, quality=None,
          auction=gsp) -> list[Placement]:
    """Fill the slots for one request; pctr must already be calibrated. See the module docstring.

    auction(bids, pctr, reserves, quality) -> AuctionResult: the GSP by default (benchmarks pass baselines).
    """
    bids = np.asarray(bids, dtype=np.float64)
    pctr = np.asarray(pctr, dtype=np.float64)
    eligible = np.zeros(len(campaigns), dtype=bool)
    for j, c in enumerate(campaigns):
        if ledger.remaining(c, day) < min(reserves) or not freq.allowed(user, c, now):
            continue
        eligible[j] = rng.random() < ledger.participation(c, elapsed, day)
    if not eligible.any():
        return []
    idx = np.flatnonzero(eligible)
    # a campaign cannot pay more than it has left: its bid is capped at its remaining budget
    capped = np.array([min(bids[j], ledger.remaining(campaigns[j], day)) for j in idx])
    result = auction(capped, pctr[idx], reserves, None if quality is None else np.asarray(quality)[idx])
    out = []
    for slot, (w, price) in enumerate(zip(result.winners, result.prices)):
        j = int(idx[w])
        c = campaigns[j]
        if not freq.admit(user, c, now):
            continue
        if not ledger.hold(c, float(price), day):
            continue  # the impression stays counted: it was admitted, a rare race, on the safe side
        out.append(Placement(c, slot, float(price), float(pctr[j]), float(bids[j])))
    return out


def settle(ledger: BudgetLedger, placement: Placement, clicked: bool) -> float:
    """Charge the held price on a click, release it otherwise; returns the amount charged."""
    if clicked:
        return ledger.commit(placement.campaign, placement.price)
    ledger.release(placement.campaign, placement.price)
    return 0.0
