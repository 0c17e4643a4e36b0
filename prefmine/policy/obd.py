"""Reader for the Open Bandit Dataset (OBD): ZOZOTOWN's logged recommendations with real propensities.

Layout (the full dataset and the 10,000-round sample that the `obp` wheel ships under `obp/dataset/obd/`):

    ROOT/{random,bts}/{all,men,women}/{campaign}.csv       one row per impression
    ROOT/{random,bts}/{all,men,women}/item_context.csv     item features

Columns of the impression CSV (its header): an unnamed index, timestamp, item_id (0..n_items-1), position
(1..3, the slot on the page), click (0/1), propensity_score (the behaviour policy's probability of showing
item_id at position: 1/n_items for the uniform random policy, Monte Carlo estimates for Bernoulli TS),
user_feature_0..3 (hashed categories), user-item_affinity_0.. (past click counts).

Like obp's `OpenBanditDataset.load_raw_data`, rows are sorted by timestamp (the same pandas sort, so ties keep
obp's order) and positions become 0-based. Unlike it, rows are validated one by one: a row with a missing or
out-of-range item_id, position, click or propensity_score is dropped and reported by row and field, and every
good row is kept.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")


@dataclass(frozen=True)
class ObdConfig:
    """Where the OBD lives (`root`; None: the sample inside the installed obp package) and which log to read."""

    behavior_policy: str = "random"
    campaign: str = "all"
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.behavior_policy not in BEHAVIOR_POLICIES:
            raise ValueError(f"behavior_policy: must be one of {BEHAVIOR_POLICIES}, got {self.behavior_policy!r}")
        if self.campaign not in CAMPAIGNS:
            raise ValueError(f"campaign: must be one of {CAMPAIGNS}, got {self.campaign!r}")


@dataclass
class ObdLog:
    """One behaviour policy's log as arrays in obp's bandit-feedback layout, plus the rows rejected on reading."""

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    timestamp: np.ndarray
    user_features: pd.DataFrame
    n_actions: int
    len_list: int
    source: Path
    errors: list[str] = field(default_factory=list)

    @property
    def n_rounds(self) -> int:
        return len(self.action)

    def on_policy_value(self) -> float:
        """Mean click per impression: the behaviour policy's own value, the ground truth OPE is checked on."""
        return float(self.reward.mean())


def obp_sample_root() -> Path:
    """The `obd` folder inside the installed obp package (found without importing obp, which pulls in torch)."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("obp is not installed: pass the folder holding {random,bts}/{campaign}/ as root")
    root = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "obd"
    if not root.is_dir():
        raise FileNotFoundError(f"no OBD sample under {root}")
    return root


REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


def read_obd(config: ObdConfig | None = None, n_actions: int | None = None) -> ObdLog:
    """Read one log. n_actions: the catalogue size (default: the largest item_id + 1, as obp does)."""
    cfg = config or ObdConfig()
    root = Path(cfg.root) if cfg.root is not None else obp_sample_root()
    path = root / cfg.behavior_policy / cfg.campaign / f"{cfg.campaign}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no OBD log at {path}")
    df = pd.read_csv(path, index_col=0, low_memory=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    df = df.sort_values("timestamp")  # obp's sort, so that rows with equal timestamps keep obp's order

    errors: list[str] = []
    ok = np.ones(len(df), dtype=bool)
    rows = df.index.to_numpy()

    def numeric(col: str) -> np.ndarray:
        return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)

    checks = {
        "item_id": (numeric("item_id"), lambda v: (v >= 0) & (v == np.floor(v)), "an integer >= 0"),
        "position": (numeric("position"), lambda v: (v >= 1) & (v == np.floor(v)), "an integer >= 1"),
        "click": (numeric("click"), lambda v: (v == 0) | (v == 1), "0 or 1"),
        "propensity_score": (numeric("propensity_score"), lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
    }
    values = {}
    for col, (v, good, what) in checks.items():
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | ~good(np.nan_to_num(v, nan=-1.0))
        if n_actions is not None and col == "item_id":
            bad |= np.nan_to_num(v, nan=-1.0) >= n_actions
            what = f"an integer in [0, {n_actions - 1}]"
        for r in rows[bad]:
            errors.append(f"row {r}: {col} must be {what}, got {df.at[r, col]!r}")
        ok &= ~bad
        values[col] = v
    if not ok.any():
        raise ValueError(f"{path}: no valid rows ({len(errors)} errors, first: {errors[:3]})")
    action = values["item_id"][ok].astype(np.int64)
    position = values["position"][ok].astype(np.int64) - 1
    user_cols = [c for c in df.columns if c.startswith("user_feature")]
    return ObdLog(
        action=action,
        position=position,
        reward=values["click"][ok].astype(np.int64),
        pscore=values["propensity_score"][ok],
        timestamp=df["timestamp"].to_numpy()[ok],
        user_features=df.loc[ok, user_cols].reset_index(drop=True),
        n_actions=int(n_actions if n_actions is not None else action.max() + 1),
        len_list=int(position.max() + 1),
        source=path,
        errors=errors,
    )


def zozotown_bts_prior(campaign: str = "all", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Beta prior (alpha, beta) of the Bernoulli TS policy that ZOZOTOWN ran, from obp's prior_bts.yaml
    (obp's `BernoulliTS(is_zozotown_prior=True, campaign=...)`); root: a folder holding prior_bts.yaml."""
    import yaml

    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign: must be one of {CAMPAIGNS}, got {campaign!r}")
    if root is None:
        root = obp_sample_root().parent.parent / "policy" / "conf"
    with open(Path(root) / "prior_bts.yaml") as f:
        prior = yaml.safe_load(f)
    return np.asarray(prior[campaign]["alpha"], dtype=np.float64), np.asarray(prior[campaign]["beta"], dtype=np.float64)
