"""`SynthConfig`: the size, seed and behaviour settings of a synthetic log, checked when it is made.

Bad settings (a negative count, a probability above 1) fail here with the field's name, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np


@dataclass
class SynthConfig:
    users: int
    items: int
    events: int
    seed: int = 0
    events_per_part: int = 1_000_000
    fmt: str = "parquet"  # parquet | csv
    zipf_a: float = 1.1  # item popularity exponent within a category
    prefs_per_user: int = 3  # preferred categories per user
    pref_alpha: float = 0.5  # Dirichlet concentration of a user's preference weights
    explore: float = 0.1  # share of sessions in a category drawn from global popularity
    stray: float = 0.1  # share of views outside the session's category
    activity_sigma: float = 1.5  # lognormal sigma of per-user activity (heavy tail)
    mean_views: float = 6.0  # geometric mean of views per session
    max_views: int = 200
    p_click: float = 0.4  # per view
    p_cart: float = 0.15  # per click
    p_buy: float = 0.45  # per cart
    p_rate: float = 0.3  # per buy
    review_prob: float = 0.85  # share of rate events with a review title and text
    content_share: float = 0.0  # share of items that are content (articles, videos) with a publication time

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("users", "items", "events", "events_per_part", "prefs_per_user", "max_views"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if self.fmt not in ("parquet", "csv"):
            raise ValueError(f"fmt must be 'parquet' or 'csv', got {self.fmt!r}")
        for name in ("zipf_a", "pref_alpha", "activity_sigma", "mean_views"):
            _check_real(name, getattr(self, name), 0.0, None, low_open=name != "activity_sigma")
        if self.mean_views < 1:
            raise ValueError(f"mean_views must be >= 1, got {self.mean_views}")
        for name in ("explore", "stray", "p_click", "p_cart", "p_buy", "p_rate", "review_prob", "content_share"):
            _check_real(name, getattr(self, name), 0.0, 1.0)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_real(name: str, value, low: float, high: float | None, low_open: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}")
