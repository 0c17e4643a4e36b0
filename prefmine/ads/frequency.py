"""Frequency caps: at most `cap` impressions of one campaign to one user within a sliding window.

`admit(user, campaign, now)` checks and records in one step under a lock, so two concurrent requests for the
same user cannot both take the last impression. Old timestamps are pruned on every access of a (user,
campaign) pair. State is in process memory (per serving replica for now).
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

    def allowed(self, user: str, campaign: str, now: float) -> bool:
        """Whether one more impression would stay within the cap (records nothing)."""
        with self._lock:
            return len(self._recent((user, campaign), now)) < self.cap

    def admit(self, user: str, campaign: str, now: float) -> bool:
        """Record an impression if it stays within the cap (atomic); False: over the cap, nothing recorded."""
        with self._lock:
            q = self._recent((user, campaign), now)
            if len(q) >= self.cap:
                return False
            q.append(now)
            return True

    def count(self, user: str, campaign: str, now: float) -> int:
        with self._lock:
            return len(self._recent((user, campaign), now))
