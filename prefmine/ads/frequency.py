"""Frequency caps: at most `cap` impressions of one campaign to one user within a sliding window.

`admit(user, campaign, now)` checks and records in one step under a lock, so two concurrent requests for the
same user cannot both take the last impression; `cap=` overrides the default cap for one campaign. Old timestamps
are pruned on every access of a (user, campaign) pair and `sweep` drops the pairs with none left. State is in
process memory only: the simulations and benchmarks use it, and serving uses it for erased people, whose
impressions must not be stored (prefmine.serving.ad_auction).
"""

from __future__ import annotations

import threading
from collections import deque


class FrequencyCap:
    def __init__(self, cap: int, window_s: float):
        if cap < 1:
            raise ValueError(f"FrequencyCap: field 'cap': must be >= 1, got {cap!r}")
        if not window_s > 0:
            raise ValueError(f"FrequencyCap: field 'window_s': must be > 0, got {window_s!r}")
        self.cap = int(cap)
        self.window_s = float(window_s)
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], deque] = {}

    def _recent(self, key, now: float) -> deque:
        q = self._seen.get(key)
        if q is None:
            q = self._seen[key] = deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def allowed(self, user: str, campaign: str, now: float, cap: int | None = None) -> bool:
        """Whether one more impression would stay within the cap (records nothing)."""
        with self._lock:
            return len(self._recent((user, campaign), now)) < (self.cap if cap is None else cap)

    def admit(self, user: str, campaign: str, now: float, cap: int | None = None) -> bool:
        """Record an impression if it stays within the cap (atomic); False: over the cap, nothing recorded."""
        with self._lock:
            q = self._recent((user, campaign), now)
            if len(q) >= (self.cap if cap is None else cap):
                return False
            q.append(now)
            return True

    def sweep(self, now: float) -> None:
        """Forget every (user, campaign) pair with no impression left in the window (bounds the memory)."""
        with self._lock:
            for key in list(self._seen):
                if not self._recent(key, now):
                    del self._seen[key]

    def count(self, user: str, campaign: str, now: float) -> int:
        with self._lock:
            return len(self._recent((user, campaign), now))
