"""Generalised second-price (GSP) auction with per-slot reserve prices, priced per click.

Allocation. Ads are ranked by score = bid x q, q = calibrated pCTR (x an optional quality factor), best first;
ties keep the input order. Slots are filled top down: walking the ranking, an ad takes the next free slot s if
its bid clears that slot's reserve r_s, and is skipped (not shown) otherwise. Reserves must not increase down the
page. Ads with bid <= 0 or q <= 0 are never shown.

Price. A winner in slot s pays per click the least bid with which it would still get slot s:

    price_s = min(bid, max(r_s, score_c / q))

where c is the first ad ranked below it whose bid clears r_s (the ad that would take slot s from it; ads in
between do not clear r_s and would be skipped for slot s whatever it bid). Without such an ad it pays the
reserve. So a winner never pays more than its bid nor less than its slot's reserve, and with one slot and no
reserve this is Vickrey's second price.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AuctionResult:
    """winners[s]: index (into the input arrays) of the ad in slot s; prices[s]: its price per click.

    Slots that no ad filled are absent (len(winners) <= number of slots).
    """

    winners: np.ndarray
    prices: np.ndarray

    def price_of(self, n: int) -> np.ndarray:
        """Per input ad: its price if it won a slot, else 0."""
        out = np.zeros(n, dtype=np.float64)
        out[self.winners] = self.prices
        return out


def _check(name: str, x: np.ndarray, n: int) -> None:
    if x.shape != (n,):
        raise ValueError(f"gsp: field {name!r}: expected {n} values, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        bad = int(np.flatnonzero(~np.isfinite(x) | (x < 0))[0])
        raise ValueError(f"gsp: field {name!r}[{bad}]: must be finite and >= 0, got {x[bad]!r}")


def gsp(bids, pctr, reserves, quality=None) -> AuctionResult:
    """Run one auction. bids: per-click bids; pctr: calibrated click probabilities; reserves: per slot, best
    slot first (non-increasing); quality: optional extra ranking factor per ad (default 1)."""
    bids = np.asarray(bids, dtype=np.float64)
    q = np.asarray(pctr, dtype=np.float64)
    n = len(bids)
    _check("bids", bids, n)
    _check("pctr", q, n)
    if quality is not None:
        qual = np.asarray(quality, dtype=np.float64)
        _check("quality", qual, n)
        q = q * qual
    r = np.asarray(reserves, dtype=np.float64)
    if r.ndim != 1 or not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(np.diff(r) > 0):
        raise ValueError(f"gsp: field 'reserves': must be finite, >= 0 and non-increasing, got {r.tolist()}")
    ok = (bids > 0) & (q > 0)
    score = bids * q
    idx = np.flatnonzero(ok)
    ranked = idx[np.lexsort((idx, -score[idx]))]  # best score first, ties in input order
    winners: list[int] = []
    prices: list[float] = []
    pos = 0
    for reserve in r:
        while pos < len(ranked) and bids[ranked[pos]] < reserve:
            pos += 1  # does not clear this slot's reserve (nor any earlier one): skipped
        if pos == len(ranked):
            break
        w = ranked[pos]
        pos += 1
        rival = next((c for c in ranked[pos:] if bids[c] >= reserve), None)
        need = reserve if rival is None else max(reserve, score[rival] / q[w])
        winners.append(int(w))
        prices.append(float(min(bids[w], need)))
    return AuctionResult(np.asarray(winners, dtype=np.int64), np.asarray(prices, dtype=np.float64))


def position_prices(bids, pctr) -> np.ndarray:
    """Per ad, its GSP price per click when every position of the ranking is a slot and there is no reserve
    (what Rank returns beside its order); 0 for an ad that cannot win (bid or pCTR 0)."""
    n = len(np.asarray(bids))
    return gsp(bids, pctr, np.zeros(n)).price_of(n)
