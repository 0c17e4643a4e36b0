"""Advertisers' campaigns as the shared store keeps them, and the row checks of a campaign write.

A campaign is an id, a daily budget (in the bids' currency unit, spent per click), an optional frequency cap
that overrides AdsConfig.freq_cap for its ads, and an active flag (an inactive campaign never enters an auction).
Campaign writes (WriteCampaigns over gRPC, `prefmine ads campaigns write` from a file) are checked row by row by
`validate_campaigns`: a bad row is refused with its index, its id and the field at fault, and the good rows are
stored. A file row that cannot even be read as a campaign (not JSON, an unknown column) reaches it as
`Unparsable`, so both paths refuse through the one function.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_ROWS = 10_000
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


@dataclass(frozen=True)
class Campaign:
    campaign: str
    daily_budget: float
    freq_cap: int | None = None  # None: AdsConfig.freq_cap
    active: bool = True


@dataclass(frozen=True)
class RowError:
    index: int
    campaign: str
    reason: str


@dataclass(frozen=True)
class Unparsable:
    """A row that could not be turned into a Campaign (its id as far as known, and why): refused as it is."""

    campaign: str
    reason: str


def check_campaign_id(value: object, field: str = "campaign_id") -> str:
    """`value` if it is a campaign id (1..128 characters of A-Z a-z 0-9 . _ : @ -), else ValueError naming field."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = repr(value[:20]) if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{field} must be 1..128 characters of A-Z, a-z, 0-9 and . _ : @ -, got {shown}")
    return value


def check_campaign(c: Campaign) -> Campaign:
    """The campaign if every field is valid, else ValueError naming the field."""
    check_campaign_id(c.campaign)
    b = c.daily_budget
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not (math.isfinite(b) and b >= 0):
        raise ValueError(f"daily_budget must be a finite number >= 0, got {b!r}")
    if c.freq_cap is not None and (isinstance(c.freq_cap, bool) or not isinstance(c.freq_cap, int)
                                   or c.freq_cap < 1):
        raise ValueError(f"freq_cap must be an integer >= 1 (or unset), got {c.freq_cap!r}")
    if not isinstance(c.active, bool):
        raise ValueError(f"active must be true or false, got {c.active!r}")
    return c


def validate_campaigns(rows: list[Campaign | Unparsable]) -> tuple[list[Campaign], list[RowError]]:
    """(good rows, refused rows with their reasons). A campaign id given twice keeps its last row only when
    both are good; more than MAX_ROWS rows is a ValueError for the whole request."""
    if len(rows) > MAX_ROWS:
        raise ValueError(f"{len(rows)} rows, at most {MAX_ROWS}")
    good: dict[str, Campaign] = {}
    bad: list[RowError] = []
    for n, row in enumerate(rows):
        if isinstance(row, Unparsable):
            bad.append(RowError(n, row.campaign[:128], row.reason))
            continue
        try:
            check_campaign(row)
        except ValueError as e:
            bad.append(RowError(n, str(row.campaign)[:128], str(e)))
            continue
        good[row.campaign] = row
    return list(good.values()), bad
