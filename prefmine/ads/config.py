"""The one configuration of the ads component."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdsConfig:
    """Auction, pacing, frequency-cap and calibration settings.

    reserves: minimum price per click for each ad slot, best slot first (len(reserves) = number of slots);
    they must not increase down the page, so an ad that clears a slot's reserve clears every later one.
    pacing_tolerance: how far (as a share of the daily budget) a campaign's spend may run ahead of the share of
    the day that has elapsed before it is throttled completely; between 0 and that, its participation
    probability falls linearly (spend is spread over the day instead of burnt in the first hour).
    freq_cap / freq_window_s: at most `freq_cap` impressions of one campaign to one user per window.
    hold_ttl_s: how long a winner's price stays held on its campaign's budget waiting for a click (serving's
    shared ledger); after it the hold is released and a later click charges nothing.
    calibration_methods: the candidates the calibrator picks from by held-out log loss ("identity" keeps the raw
    probabilities when neither mapping helps); ece_bins: equal-width bins of the expected calibration error.
    """

    reserves: tuple[float, ...] = (0.05, 0.03, 0.02)
    pacing_tolerance: float = 0.05
    freq_cap: int = 3
    freq_window_s: float = 86_400.0
    hold_ttl_s: float = 1_800.0
    calibration_methods: tuple[str, ...] = ("identity", "platt", "isotonic")
    calibration_folds: int = 3
    ece_bins: int = 15

    def __post_init__(self):
        if not self.reserves:
            raise ValueError("AdsConfig.reserves: at least one slot is needed")
        for i, r in enumerate(self.reserves):
            if not (r >= 0 and r < float("inf")):
                raise ValueError(f"AdsConfig.reserves[{i}]: must be finite and >= 0, got {r!r}")
        if any(b > a for a, b in zip(self.reserves, self.reserves[1:])):
            raise ValueError(f"AdsConfig.reserves: must not increase down the page, got {self.reserves}")
        if not 0 < self.pacing_tolerance <= 1:
            raise ValueError(f"AdsConfig.pacing_tolerance: must be in (0, 1], got {self.pacing_tolerance}")
        if self.freq_cap < 1:
            raise ValueError(f"AdsConfig.freq_cap: must be >= 1, got {self.freq_cap}")
        if not self.freq_window_s > 0:
            raise ValueError(f"AdsConfig.freq_window_s: must be > 0, got {self.freq_window_s}")
        if not self.hold_ttl_s > 0:
            raise ValueError(f"AdsConfig.hold_ttl_s: must be > 0, got {self.hold_ttl_s}")
        unknown = set(self.calibration_methods) - {"identity", "platt", "isotonic"}
        if unknown or not self.calibration_methods:
            raise ValueError(f"AdsConfig.calibration_methods: unknown {sorted(unknown)} (identity, platt, isotonic)")
        if self.calibration_folds < 2:
            raise ValueError(f"AdsConfig.calibration_folds: must be >= 2, got {self.calibration_folds}")
        if self.ece_bins < 1:
            raise ValueError(f"AdsConfig.ece_bins: must be >= 1, got {self.ece_bins}")

    @classmethod
    def of(cls, values: dict | None) -> AdsConfig:
        """From a config mapping (YAML/JSON: lists for the tuples); unknown keys are an error naming them."""
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"AdsConfig: unknown fields {sorted(unknown)}")
        for name in ("reserves", "calibration_methods"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    @property
    def slots(self) -> int:
        return len(self.reserves)
