"""The ad tables of the feedback store, one SQL text for both backends: campaigns, daily spend per campaign, and
the ad impressions with their budget holds. Every serving replica (and every process) shares them through the
store, so budgets and frequency caps hold across replicas.

    ad_campaigns(campaign, daily_budget, freq_cap, active, updated)   written by WriteCampaigns
    ad_spend(campaign, day, committed, held)                          one row per campaign and UTC day
    ad_holds(hold_id, campaign, day, pseudonym, item, amount, charged, state, ts)
                                                                      one row per ad shown (state held, committed,
                                                                      released); the frequency caps count them

Pay per click, two-phase as prefmine.ads.budget.BudgetLedger: `hold` reserves a winner's price when Rank answers,
in one transaction that checks the campaign (known, active), the user's frequency cap over the window and the
budget. The budget check is one conditional UPDATE (``held = held + x WHERE committed + held + x <= budget``), so
whatever the interleaving of replicas and processes committed + held never exceeds the daily budget: SQLite
serialises writers (BEGIN IMMEDIATE), PostgreSQL re-checks the WHERE clause on the row's newest version after
waiting for its lock. PostgreSQL also takes an advisory lock per (user, campaign) so that two replicas cannot both
take a user's last impression under the cap. `commit` (a click naming the hold) turns the hold into spend once: a
retried click finds it committed and charges nothing. `release_expired` frees the holds no click claimed within
the TTL. Rank's reads (campaigns, the day's spend, the user's impressions) are one query each for all its
candidates' campaigns; each winner's hold stays its own transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from prefmine.ads.campaigns import Campaign

HELD, COMMITTED, RELEASED = "held", "committed", "released"
# sums of prices in floating point: ten holds of 0.1 fill a budget of 1.0 (rounding never refuses the last one);
# far below any currency's smallest unit
MONEY_EPS = 1e-9
IN_CHUNK = 500  # campaign ids per IN (...) list: one query for any Rank's candidates, far below the backends' limits


def schema(real: str) -> list[str]:
    """The ad tables' DDL; `real` is the backend's double type (REAL, DOUBLE PRECISION)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS ad_campaigns (
            campaign TEXT PRIMARY KEY,
            daily_budget {real} NOT NULL,
            freq_cap INTEGER,
            active INTEGER NOT NULL,
            updated {real} NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS ad_spend (
            campaign TEXT NOT NULL,
            day TEXT NOT NULL,
            committed {real} NOT NULL DEFAULT 0,
            held {real} NOT NULL DEFAULT 0,
            PRIMARY KEY (campaign, day)
        )""",
        f"""CREATE TABLE IF NOT EXISTS ad_holds (
            hold_id TEXT PRIMARY KEY,
            campaign TEXT NOT NULL,
            day TEXT NOT NULL,
            pseudonym TEXT NOT NULL,
            item TEXT NOT NULL,
            amount {real} NOT NULL,
            charged {real} NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            ts {real} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS ad_holds_user ON ad_holds (pseudonym, campaign, ts)",
        "CREATE INDEX IF NOT EXISTS ad_holds_open ON ad_holds (state, ts)",
    ]


Run = Callable[[str, tuple], object]  # execute(sql, params) -> a cursor (fetchone, fetchall, rowcount)


class AdLedger:
    """The ad tables of one store. `write()` opens one write transaction and yields its execute function,
    `read()` yields one outside a transaction; `mark` is the backend's parameter mark (? or %s), every ? of the
    SQL below becomes it; `lock_pair(run, user, campaign)` serialises holds of one (user, campaign) where the
    backend's writers do not already take turns."""

    def __init__(self, write: Callable[[], AbstractContextManager[Run]], read: Callable[[], AbstractContextManager[Run]],
                 mark: str = "?", lock_pair: Callable[[Run, str, str], None] | None = None):
        self._write, self._read, self._mark = write, read, mark
        self._lock_pair = lock_pair or (lambda run, user, campaign: None)

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

    # -- campaigns ------------------------------------------------------------------------------------------
    def put_campaigns(self, campaigns: list[Campaign]) -> int:
        """Insert or replace campaigns (checked already: prefmine.ads.campaigns.validate_campaigns), durably."""
        now = time.time()
        with self._write() as run:
            for c in campaigns:
                run(self._sql("INSERT INTO ad_campaigns (campaign, daily_budget, freq_cap, active, updated) "
                              "VALUES (?, ?, ?, ?, ?) ON CONFLICT (campaign) DO UPDATE SET "
                              "daily_budget = excluded.daily_budget, freq_cap = excluded.freq_cap, "
                              "active = excluded.active, updated = excluded.updated"),
                    (c.campaign, float(c.daily_budget), c.freq_cap, int(bool(c.active)), now))
        return len(campaigns)

    def _rows_in(self, sql: str, before: tuple, ids: list[str], after: str = "") -> list[tuple]:
        """The rows of `sql` + `` AND campaign IN (...)`` + `after` for every id, one query per IN_CHUNK ids (one
        round trip for a Rank's candidates); `before`: the parameters of `sql`'s own marks."""
        rows: list[tuple] = []
        with self._read() as run:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = tuple(ids[start:start + IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows += run(self._sql(f"{sql} AND campaign IN ({marks}){after}"), (*before, *chunk)).fetchall()
        return rows

    def campaigns(self, ids: list[str]) -> dict[str, Campaign]:
        """The stored campaigns among `ids` (unknown ids are absent)."""
        return {str(c): Campaign(str(c), float(budget), None if cap is None else int(cap), bool(active))
                for c, budget, cap, active in self._rows_in(
                    "SELECT campaign, daily_budget, freq_cap, active FROM ad_campaigns WHERE 1 = 1", (), ids)}

    def all_campaigns(self) -> list[Campaign]:
        """Every stored campaign, by id."""
        with self._read() as run:
            rows = run("SELECT campaign, daily_budget, freq_cap, active FROM ad_campaigns ORDER BY campaign",
                       ()).fetchall()
        return [Campaign(str(c), float(b), None if cap is None else int(cap), bool(a)) for c, b, cap, a in rows]

    def set_active(self, campaign: str, active: bool) -> bool:
        """Pause (or resume) a stored campaign: from the next auction on it enters none (its open holds stay
        until clicked or expired). False: no such campaign."""
        with self._write() as run:
            cur = run(self._sql("UPDATE ad_campaigns SET active = ?, updated = ? WHERE campaign = ?"),
                      (int(bool(active)), time.time(), campaign))
            return cur.rowcount == 1

    # -- spend and impressions ------------------------------------------------------------------------------
    def spend(self, ids: list[str], day: str) -> dict[str, tuple[float, float]]:
        """(committed, held) of each campaign on `day` ((0, 0) for one without spend yet)."""
        out = {str(c): (0.0, 0.0) for c in ids}
        for c, committed, held in self._rows_in("SELECT campaign, committed, held FROM ad_spend WHERE day = ?",
                                                (day,), list(out)):
            out[str(c)] = (float(committed), float(held))
        return out

    def impressions(self, user: str, ids: list[str], since: float) -> dict[str, int]:
        """How many ads of each campaign the user was shown after `since` (Unix seconds)."""
        out = {str(c): 0 for c in ids}
        for c, n in self._rows_in("SELECT campaign, COUNT(*) FROM ad_holds WHERE pseudonym = ? AND ts > ?",
                                  (user, float(since)), list(out), " GROUP BY campaign"):
            out[str(c)] = int(n)
        return out

    # -- hold / commit / release ----------------------------------------------------------------------------
    def hold(self, hold_id: str, campaign: str, user: str, item: str, amount: float, day: str, cap: int,
             window_s: float, now: float | None = None) -> str:
        """Log an ad impression and hold `amount` of the campaign's budget for `day`, atomically. Returns "ok",
        or why nothing was stored: "inactive" (unknown or paused campaign), "frequency_cap" (the user saw as
        many of its ads within `window_s` as its cap allows: the campaign's own freq_cap, else `cap`; an
        anonymous user "" has no cap) or "budget"."""
        if not (amount >= 0 and amount < float("inf")):
            raise ValueError(f"hold: field 'amount': must be finite and >= 0, got {amount!r}")
        now = time.time() if now is None else float(now)
        with self._write() as run:
            self._lock_pair(run, user, campaign)
            row = run(self._sql("SELECT daily_budget, active, freq_cap FROM ad_campaigns WHERE campaign = ?"),
                      (campaign,)).fetchone()
            if row is None or not row[1]:
                return "inactive"
            budget, cap = float(row[0]), int(cap if row[2] is None else row[2])
            if user:
                seen = run(self._sql("SELECT COUNT(*) FROM ad_holds WHERE pseudonym = ? AND campaign = ? AND ts > ?"),
                           (user, campaign, now - window_s)).fetchone()[0]
                if int(seen) >= cap:
                    return "frequency_cap"
            run(self._sql("INSERT INTO ad_spend (campaign, day, committed, held) VALUES (?, ?, 0, 0) "
                          "ON CONFLICT (campaign, day) DO NOTHING"), (campaign, day))
            cur = run(self._sql("UPDATE ad_spend SET held = held + ? WHERE campaign = ? AND day = ? "
                                "AND committed + held + ? <= ?"),
                      (float(amount), campaign, day, float(amount), budget + MONEY_EPS))
            if cur.rowcount != 1:
                return "budget"
            run(self._sql("INSERT INTO ad_holds (hold_id, campaign, day, pseudonym, item, amount, charged, state, ts) "
                          "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)"),
                (hold_id, campaign, day, user, item, float(amount), HELD, now))
        return "ok"

    def _settle(self, run: Run, hold_id: str, state: str) -> tuple[str, str, float] | None:
        """Move one held hold to `state` (only if still held: whoever does it first) and take it off `held`;
        returns (campaign, day, amount), None if it was not held."""
        cur = run(self._sql("UPDATE ad_holds SET state = ?, charged = amount * ? WHERE hold_id = ? AND state = 'held'"),
                  (state, 1.0 if state == COMMITTED else 0.0, hold_id))
        if cur.rowcount != 1:
            return None
        campaign, day, amount = run(self._sql("SELECT campaign, day, amount FROM ad_holds WHERE hold_id = ?"),
                                    (hold_id,)).fetchone()
        paid = float(amount) if state == COMMITTED else 0.0
        run(self._sql("UPDATE ad_spend SET held = CASE WHEN held - ? > 0 THEN held - ? ELSE 0 END, "
                      "committed = committed + ? WHERE campaign = ? AND day = ?"),
            (float(amount), float(amount), paid, campaign, day))
        return str(campaign), str(day), float(amount)

    def commit(self, hold_id: str, user: str, item: str) -> float:
        """A click on the ad shown under `hold_id` by `user` on `item`: its held price becomes spend, once.
        Returns the amount charged; 0 when the hold is unknown, names another user or item, was charged already
        (a retried click) or expired (released)."""
        with self._write() as run:
            row = run(self._sql("SELECT pseudonym, item FROM ad_holds WHERE hold_id = ?"), (hold_id,)).fetchone()
            if row is None or str(row[0]) != user or str(row[1]) != item:
                return 0.0
            done = self._settle(run, hold_id, COMMITTED)
        return 0.0 if done is None else done[2]

    def release_expired(self, ttl_s: float, now: float | None = None) -> int:
        """Release every hold older than `ttl_s` that no click claimed; returns how many."""
        cutoff = (time.time() if now is None else float(now)) - ttl_s
        with self._write() as run:
            ids = [str(r[0]) for r in run(self._sql("SELECT hold_id FROM ad_holds WHERE state = 'held' AND ts < ?"),
                                          (cutoff,)).fetchall()]
            return sum(self._settle(run, h, RELEASED) is not None for h in ids)

    def forget(self, run: Run, user: str) -> None:
        """Erase a user from the ad log (inside the store's forget transaction); spend stays as it was."""
        run(self._sql("UPDATE ad_holds SET pseudonym = '' WHERE pseudonym = ?"), (user,))
