"""The one configuration of the ads component: the `ads` section of the config tree (prefmine.train_config; the
ranker stage fits the click calibration with it, `prefmine serve --config/--set` runs Rank's auction with it) and
the `ads` argument of serve.app:build_app."""

from __future__ import annotations

from dataclasses import dataclass

from prefmine.config import ConfigError


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
    shared ledger); after it the hold is released and a later click charges nothing. Holds of unclicked ads cap
    what their campaigns can bid, so a long TTL costs revenue and one shorter than the clicks' delay gives clicks
    away: bench/README.md ("Hold TTL") weighs the two.
    calibration_methods: the candidates the calibrator picks from by held-out log loss ("identity" keeps the raw
    probabilities when neither mapping helps); calibration_folds: the cross-validation folds of that choice;
    calibration_negatives: random unseen items beside each held-out user's real next item (the click), so the
    calibrated probability is the click rate of one candidate among calibration_negatives + 1;
    calibration_max_users: held-out users sampled to fit and judge it; ece_bins: equal-width bins of the expected
    calibration error and the reliability diagram.
    """

    reserves: tuple[float, ...] = (0.05, 0.03, 0.02)
    pacing_tolerance: float = 0.05
    freq_cap: int = 3
    freq_window_s: float = 86_400.0
    hold_ttl_s: float = 600.0
    calibration_methods: tuple[str, ...] = ("identity", "platt", "isotonic")
    calibration_folds: int = 3
    calibration_negatives: int = 19
    calibration_max_users: int = 4000
    ece_bins: int = 15

    def __post_init__(self):
        if not self.reserves:
            raise ConfigError("AdsConfig.reserves: at least one slot is needed")
        for i, r in enumerate(self.reserves):
            if not (r >= 0 and r < float("inf")):
                raise ConfigError(f"AdsConfig.reserves[{i}]: must be finite and >= 0, got {r!r}")
        if any(b > a for a, b in zip(self.reserves, self.reserves[1:])):
            raise ConfigError(f"AdsConfig.reserves: must not increase down the page, got {self.reserves}")
        if not 0 < self.pacing_tolerance <= 1:
            raise ConfigError(f"AdsConfig.pacing_tolerance: must be in (0, 1], got {self.pacing_tolerance}")
        if self.freq_cap < 1:
            raise ConfigError(f"AdsConfig.freq_cap: must be >= 1, got {self.freq_cap}")
        if not self.freq_window_s > 0:
            raise ConfigError(f"AdsConfig.freq_window_s: must be > 0, got {self.freq_window_s}")
        if not self.hold_ttl_s > 0:
            raise ConfigError(f"AdsConfig.hold_ttl_s: must be > 0, got {self.hold_ttl_s}")
        unknown = set(self.calibration_methods) - {"identity", "platt", "isotonic"}
        if unknown or not self.calibration_methods:
            raise ConfigError(f"AdsConfig.calibration_methods: unknown {sorted(unknown)} (identity, platt, isotonic)")
        if self.calibration_folds < 2:
            raise ConfigError(f"AdsConfig.calibration_folds: must be >= 2, got {self.calibration_folds}")
        if self.calibration_negatives < 1:
            raise ConfigError(f"AdsConfig.calibration_negatives: must be >= 1, got {self.calibration_negatives}")
        if self.calibration_max_users < 2:
            raise ConfigError(f"AdsConfig.calibration_max_users: must be >= 2, got {self.calibration_max_users}")
        if self.ece_bins < 1:
            raise ConfigError(f"AdsConfig.ece_bins: must be >= 1, got {self.ece_bins}")

    @classmethod
    def of(cls, values: dict | None) -> AdsConfig:
        """From a config mapping (YAML/JSON: lists for the tuples); unknown keys are an error naming them."""
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"AdsConfig: unknown fields {sorted(unknown)}")
        for name in ("reserves", "calibration_methods"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    @property
    def slots(self) -> int:
        return len(self.reserves)
