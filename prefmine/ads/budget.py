"""Per-campaign daily budgets: pacing spreads spend over the day, the ledger makes overspend impossible.

Ledger. Each campaign has a daily budget. Spending is two-phase so concurrent requests can never overspend:
`hold(campaign, amount)` atomically reserves money only if committed + held + amount <= budget (else it fails
and the ad is not shown); the hold is then either `commit`ted (the click happened: it becomes spend, at most
the held amount) or `release`d (no click). So committed + held <= budget at every instant, under any
interleaving of threads. A new day (`day` argument, any hashable) starts from zero.

Pacing (probabilistic throttling). A campaign that spends faster than the day elapses takes part in fewer
auctions: with `ahead = spent_share - elapsed_share`, it takes part with probability
1 - ahead / tolerance, clipped to [0, 1] (always when on or behind schedule, never once `tolerance` of its
budget ahead). Spend therefore tracks the elapsed share of the day instead of running out in the morning, and
the campaign keeps reaching the afternoon's users.

State is in process memory (simulations and benchmarks); serving keeps the same two-phase ledger in the shared
store (prefmine.feedback.ads_ledger), so every replica sees one budget.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


def pacing_probability(spent: float, budget: float, elapsed: float, tolerance: float) -> float:
    """Probability that a campaign with `spent` (committed + held) of `budget` takes part in an auction at
    `elapsed` (share of the day, 0..1): see the module docstring. 0 for a budget of 0."""
    if budget <= 0:
        return 0.0
    ahead = spent / budget - min(max(elapsed, 0.0), 1.0)
    return float(min(1.0, max(0.0, 1.0 - ahead / tolerance)))


@dataclass
class _Account:
    budget: float
    committed: float = 0.0
    held: float = 0.0


class BudgetLedger:
    """Thread-safe daily budgets with hold / commit / release (see the module docstring)."""

    def __init__(self, budgets: dict[str, float], tolerance: float = 0.05):
        for c, b in budgets.items():
            if not (b >= 0 and b < float("inf")):
                raise ValueError(f"BudgetLedger: field 'budget' of campaign {c!r}: must be finite and >= 0, got {b!r}")
        if not 0 < tolerance <= 1:
            raise ValueError(f"BudgetLedger: field 'tolerance': must be in (0, 1], got {tolerance!r}")
        self._budgets = dict(budgets)
        self._tolerance = float(tolerance)
        self._lock = threading.Lock()
        self._day = None
        self._acc: dict[str, _Account] = {}
        self.new_day(0)

    def new_day(self, day) -> None:
        with self._lock:
            self._day = day
            self._acc = {c: _Account(b) for c, b in self._budgets.items()}

    def _account(self, campaign: str, day) -> _Account:
        if day is not None and day != self._day:
            self._day = day
            self._acc = {c: _Account(b) for c, b in self._budgets.items()}
        try:
            return self._acc[campaign]
        except KeyError:
            raise KeyError(f"campaign {campaign!r} has no budget") from None

    def remaining(self, campaign: str, day=None) -> float:
        with self._lock:
            a = self._account(campaign, day)
            return max(0.0, a.budget - a.committed - a.held)  # never negative from rounding

    def spent(self, campaign: str) -> float:
        with self._lock:
            return self._acc[campaign].committed

    def participation(self, campaign: str, elapsed: float, day=None) -> float:
        """Pacing: probability that the campaign takes part in an auction at `elapsed` (share of the day, 0..1)."""
        with self._lock:
            a = self._account(campaign, day)
            return pacing_probability(a.committed + a.held, a.budget, elapsed, self._tolerance)

    def hold(self, campaign: str, amount: float, day=None) -> bool:
        """Reserve `amount` if it fits in what is left of the budget (atomic); False: nothing reserved."""
        if not (amount >= 0 and amount < float("inf")):
            raise ValueError(f"hold: field 'amount': must be finite and >= 0, got {amount!r}")
        with self._lock:
            a = self._account(campaign, day)
            if a.committed + a.held + amount > a.budget:
                return False
            a.held += amount
            return True

    def commit(self, campaign: str, held: float, charge: float | None = None) -> float:
        """Turn a hold into spend: charges min(charge, held) (default: held) and frees the rest; returns the charge."""
        charge = held if charge is None else min(float(charge), held)
        with self._lock:
            a = self._acc[campaign]
            a.held = max(0.0, a.held - held)
            a.committed += charge
            return charge

    def release(self, campaign: str, held: float) -> None:
        with self._lock:
            a = self._acc[campaign]
            a.held = max(0.0, a.held - held)
