"""The session plan: how many sessions, whose, in which category, how deep each goes into the view -> click ->
cart -> buy -> rate funnel, and when each starts.

A few arrays per session are drawn up front so events can then be generated in fixed batches with bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.schema import END_TS, START_TS
from prefmine.data.synth.world import World, grouped_cumsum, sample_cats, sample_cdf

_MIN_SESSION_GAP_S = 6 * 3600


@dataclass
class Plan:
    """One row per session, in write (start time) order."""

    user: np.ndarray
    cat: np.ndarray
    funnel: np.ndarray  # (sessions, 5): views, clicks, carts, buys, rates
    keep: np.ndarray  # events kept (all but the trimmed last session)
    start: np.ndarray  # Unix seconds
    room: np.ndarray  # seconds until the user's next session starts (or the end of the time range)


def _draw_funnels(cfg: SynthConfig, total: int, rng: np.random.Generator) -> np.ndarray:
    """Session funnels until their events reach `total` (nested binomials: clicks of views, carts of clicks...)."""
    per_view = 1 + cfg.p_click * (1 + cfg.p_cart * (1 + cfg.p_buy * (1 + cfg.p_rate)))
    chunks, have = [], 0
    while have < total:
        n = int((total - have) / (cfg.mean_views * per_view) * 1.02) + 64
        views = np.minimum(rng.geometric(1.0 / cfg.mean_views, n), cfg.max_views)
        clicks = rng.binomial(views, cfg.p_click)
        carts = rng.binomial(clicks, cfg.p_cart)
        buys = rng.binomial(carts, cfg.p_buy)
        funnel = np.stack([views, clicks, carts, buys, rng.binomial(buys, cfg.p_rate)], axis=1).astype(np.int32)
        chunks.append(funnel)
        have += int(funnel.sum())
    funnel = np.concatenate(chunks)
    n_sessions = int(np.searchsorted(np.cumsum(funnel.sum(axis=1)), total, side="left")) + 1
    return funnel[:n_sessions]


def _session_starts(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start times: each user's sessions spread over an active window, at least min(6 h, window/k) apart."""
    order = np.argsort(users, kind="stable")
    _, first, k = np.unique(users[order], return_index=True, return_counts=True)
    span = END_TS - START_TS - 86400.0  # a day's margin for the last session's events
    window = np.maximum(rng.uniform(0.25, 1.0, len(k)) * span, np.minimum(span, 2.0 * k * _MIN_SESSION_GAP_S))
    min_gap = np.minimum(_MIN_SESSION_GAP_S, window / (k + 1))
    t0 = START_TS + rng.random(len(k)) * (span - window)
    gaps = rng.exponential(size=len(users))
    group_first = np.repeat(first, k)
    cum = grouped_cumsum(gaps, group_first)
    total = cum[first + k - 1] + rng.exponential(size=len(k))
    j = np.arange(len(users)) - group_first
    t = np.repeat(t0, k) + np.repeat((window - k * min_gap) / total, k) * cum + j * np.repeat(min_gap, k)
    starts = np.empty(len(users), np.int64)
    starts[order] = np.floor(t).astype(np.int64)
    return starts


def make_plan(cfg: SynthConfig, world: World, rng: np.random.Generator) -> Plan:
    funnel = _draw_funnels(cfg, cfg.events, rng)
    lengths = funnel.sum(axis=1)
    keep = lengths.copy()
    keep[-1] -= int(lengths.sum()) - cfg.events  # trim the last session to land on exactly `events`
    n = len(funnel)
    users = sample_cdf(world.user_p, n, rng).astype(np.int32)
    slot = (rng.random(n)[:, None] >= world.user_pref_cdf[users]).sum(axis=1)
    cats = world.user_prefs[users, np.minimum(slot, cfg.prefs_per_user - 1)].astype(np.int32)
    explore = rng.random(n) < cfg.explore
    cats[explore] = sample_cats(world, int(explore.sum()), rng)
    starts = _session_starts(users, rng)
    by_user = np.lexsort((starts, users))
    next_start = np.append(starts[by_user][1:], END_TS)
    next_start[np.append(users[by_user][1:] != users[by_user][:-1], True)] = END_TS
    room = np.empty(n, np.int64)
    room[by_user] = next_start - starts[by_user]
    order = np.argsort(starts, kind="stable")
    return Plan(users[order], cats[order], funnel[order], keep[order], starts[order], room[order])
