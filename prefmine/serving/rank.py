"""Rank: a client's candidate items ordered by expected value, the probability that the user's next interaction
is the item times its bid. Sponsored candidates (with a campaign) also run an ad auction
(prefmine.serving.ad_auction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RankCandidates:
    """A Rank request's candidates resolved against the catalogue: each known item once (its first occurrence,
    with that occurrence's bid and request position), the raw ids the catalogue does not know kept apart."""

    items: np.ndarray  # item indices, int64, in first-occurrence order
    raw_ids: list[str]
    positions: np.ndarray  # request position of each item
    bids: np.ndarray
    unknown: list[str] = field(default_factory=list)
    campaigns: list[str] = field(default_factory=list)  # per item: its campaign, "" organic (all "" without any)


def rank_candidates(raw_ids: Sequence[str], bids: Sequence[float],
                    item_index: Callable[[str], int | None], campaigns: Sequence[str] = ()) -> RankCandidates:
    """Resolve the request's ids; no bids means a bid of 1.0 for each candidate, no campaigns all organic."""
    bids = list(bids) or [1.0] * len(raw_ids)
    camps = list(campaigns) or [""] * len(raw_ids)
    known: dict[int, tuple[int, str, float, str]] = {}  # item index -> (request position, raw id, bid, campaign)
    unknown: list[str] = []
    for pos, (raw, bid, camp) in enumerate(zip(raw_ids, bids, camps)):
        i = item_index(raw)
        if i is None:
            unknown.append(raw)
        elif int(i) not in known:  # duplicates are ranked once, with their first bid and campaign
            known[int(i)] = (pos, raw, float(bid), str(camp))
    return RankCandidates(items=np.fromiter(known, dtype=np.int64, count=len(known)),
                          raw_ids=[v[1] for v in known.values()],
                          positions=np.asarray([v[0] for v in known.values()], dtype=np.int64),
                          bids=np.asarray([v[2] for v in known.values()], dtype=np.float64),
                          unknown=unknown, campaigns=[v[3] for v in known.values()])


def expected_value_order(probs: np.ndarray, bids: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """(expected value per candidate, the order to answer in): highest expected value first, ties in request
    order."""
    ev = np.asarray(probs, dtype=np.float64) * np.asarray(bids, dtype=np.float64)
    return ev, np.lexsort((np.asarray(positions), -ev))
