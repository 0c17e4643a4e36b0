"""Off-policy estimators (IPS, SNIPS, DM, DR) of a policy's value from a logged bandit feed with real propensities.

Inputs follow obp's array layout so that the same arrays can be handed to obp (the reference implementation the
tests compare against) and to this module:

    reward [n]                         observed reward of round i (a click: 0/1)
    action [n]                         logged action a_i (item index 0..n_actions-1)
    position [n]                       slot the action was shown in (0..n_positions-1)
    pscore [n]                         the logging policy's propensity mu(a_i | x_i, pos_i), in (0, 1]
    action_dist [n, n_actions, n_pos]  the evaluation policy pi(a | x_i, pos), summing to 1 over actions
    q_hat [n, n_actions, n_pos]        a reward model's estimate q(x_i, a, pos) (DM and DR only)

With w_i = pi(a_i | x_i, pos_i) / pscore_i:

    IPS   = mean(w_i r_i)                                         unbiased when pi's support lies inside mu's
    SNIPS = sum(w_i r_i) / sum(w_i)                               self-normalised: biased, lower variance
    DM    = mean(sum_a pi(a | x_i, pos_i) q(x_i, a, pos_i))       as good as the reward model
    DR    = DM_i + w_i (r_i - q(x_i, a_i, pos_i)), averaged       unbiased if either pscore or q is right

Intervals: 95% by default, either a percentile bootstrap over rounds with a fixed seed (`interval="bootstrap"`,
the default; SNIPS is re-normalised inside every resample) or the normal approximation
(`interval="normal"`: mean +- z * sd / sqrt(n) of the per-round terms, SNIPS through the delta method). obp's
own intervals bootstrap the per-round terms with sklearn's random state, so its bounds are not bit-identical to
these; the point estimates are.

Also here: a cross-fitted (action, position) click-rate table as a context-free reward model for DM/DR, and the
action distribution of a Bernoulli Thompson sampling policy by Monte Carlo (obp's `BernoulliTS
.compute_batch_action_dist`, vectorised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass(frozen=True)
class OpeConfig:
    """How intervals are computed: `interval` "bootstrap" (percentile, `n_boot` resamples of the rounds drawn
    with `seed`) or "normal"; `alpha` 0.05 gives 95% intervals."""

    interval: str = "bootstrap"
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.interval not in ("bootstrap", "normal"):
            raise ValueError(f"interval: must be 'bootstrap' or 'normal', got {self.interval!r}")
        if self.n_boot < 10:
            raise ValueError(f"n_boot: must be >= 10, got {self.n_boot}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha: must lie in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class Estimate:
    """One estimator's value, its (1 - alpha) interval and how the interval was computed."""

    value: float
    ci: tuple[float, float]
    interval: str
    n_rounds: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": list(self.ci), "interval": self.interval,
                "n_rounds": self.n_rounds, **self.extra}


def _check_inputs(reward, action, position, pscore, action_dist, q_hat=None, need_log=True):
    """Validate shapes and ranges; every error names the argument. Returns float/int arrays."""
    action_dist = np.asarray(action_dist, dtype=np.float64)
    if action_dist.ndim != 3:
        raise ValueError(f"action_dist: must be 3-dimensional (n, n_actions, n_positions), got {action_dist.ndim}")
    n, n_actions, n_pos = action_dist.shape
    if n == 0:
        raise ValueError("action_dist: no rounds")
    if not np.isfinite(action_dist).all() or action_dist.min() < 0.0 or action_dist.max() > 1.0:
        raise ValueError("action_dist: probabilities must be finite and within [0, 1]")
    sums = action_dist.sum(axis=1)
    if np.abs(sums - 1.0).max() > 1e-6:
        raise ValueError("action_dist: must sum to 1 over actions at every (round, position)")
    position = np.zeros(n, dtype=np.int64) if position is None else np.asarray(position)
    out = {"action_dist": action_dist, "position": position}
    if position.shape != (n,) or not np.issubdtype(position.dtype, np.integer):
        raise ValueError(f"position: must be an integer array of length {n}")
    if position.min() < 0 or position.max() >= n_pos:
        raise ValueError(f"position: values must lie in [0, {n_pos - 1}]")
    out["position"] = position.astype(np.int64)
    if need_log:
        reward = np.asarray(reward, dtype=np.float64)
        action = np.asarray(action)
        pscore = np.asarray(pscore, dtype=np.float64)
        for name, arr in (("reward", reward), ("action", action), ("pscore", pscore)):
            if arr.shape != (n,):
                raise ValueError(f"{name}: must have shape ({n},), got {arr.shape}")
        if not np.isfinite(reward).all():
            raise ValueError("reward: must be finite")
        if not np.issubdtype(action.dtype, np.integer) or action.min() < 0 or action.max() >= n_actions:
            raise ValueError(f"action: must be integers in [0, {n_actions - 1}]")
        if not np.isfinite(pscore).all() or pscore.min() <= 0.0 or pscore.max() > 1.0:
            raise ValueError("pscore: propensities must lie in (0, 1]")
        out.update(reward=reward, action=action.astype(np.int64), pscore=pscore)
    if q_hat is not None:
        q_hat = np.asarray(q_hat, dtype=np.float64)
        if q_hat.shape != action_dist.shape:
            raise ValueError(f"q_hat: must have the shape of action_dist {action_dist.shape}, got {q_hat.shape}")
        if not np.isfinite(q_hat).all():
            raise ValueError("q_hat: must be finite")
        out["q_hat"] = q_hat
    return out


def importance_weights(action, position, pscore, action_dist) -> np.ndarray:
    """w_i = pi(a_i | x_i, pos_i) / pscore_i."""
    n = len(action)
    return action_dist[np.arange(n), action, position] / pscore


def _dm_terms(position, action_dist, q_hat) -> np.ndarray:
    n = len(position)
    rows = np.arange(n)
    return np.einsum("ij,ij->i", action_dist[rows, :, position], q_hat[rows, :, position])


def _interval(num: np.ndarray, den: np.ndarray | None, cfg: OpeConfig) -> tuple[float, float]:
    """Interval of mean(num) (den None) or of the ratio sum(num) / sum(den)."""
    n = len(num)
    if cfg.interval == "normal":
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1.0 - cfg.alpha / 2.0)
        if den is None:
            centre, terms = float(num.mean()), num
        else:
            centre = float(num.sum() / den.sum())
            terms = (num - centre * den) / den.mean()  # delta method for a ratio of means
        half = z * float(terms.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
        return centre - half, centre + half
    rng = np.random.default_rng(cfg.seed)
    stats = np.empty(cfg.n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, cfg.n_boot, chunk):
        stop = min(cfg.n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        if den is None:
            stats[start:stop] = num[idx].mean(axis=1)
        else:
            d = den[idx].sum(axis=1)
            stats[start:stop] = np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.nan)
    lo, hi = np.nanquantile(stats, [cfg.alpha / 2.0, 1.0 - cfg.alpha / 2.0])
    return float(lo), float(hi)


def ips(reward, action, position, pscore, action_dist, config: OpeConfig | None = None) -> Estimate:
    """Inverse propensity scoring (obp: InverseProbabilityWeighting, "ipw")."""
    cfg = config or OpeConfig()
    x = _check_inputs(reward, action, position, pscore, action_dist)
    w = importance_weights(x["action"], x["position"], x["pscore"], x["action_dist"])
    terms = w * x["reward"]
    return Estimate(float(terms.mean()), _interval(terms, None, cfg), cfg.interval, len(terms), _weight_stats(w))


def snips(reward, action, position, pscore, action_dist, config: OpeConfig | None = None) -> Estimate:
    """Self-normalised IPS (obp: SelfNormalizedInverseProbabilityWeighting, "snipw")."""
    cfg = config or OpeConfig()
    x = _check_inputs(reward, action, position, pscore, action_dist)
    w = importance_weights(x["action"], x["position"], x["pscore"], x["action_dist"])
    if w.sum() <= 0:
        raise ValueError("action_dist: the evaluation policy gives zero probability to every logged action")
    num = w * x["reward"]
    return Estimate(float(num.sum() / w.sum()), _interval(num, w, cfg), cfg.interval, len(w), _weight_stats(w))


def dm(position, action_dist, q_hat, config: OpeConfig | None = None) -> Estimate:
    """Direct method: the reward model averaged under the evaluation policy (obp: DirectMethod, "dm")."""
    cfg = config or OpeConfig()
    x = _check_inputs(None, None, position, None, action_dist, q_hat, need_log=False)
    terms = _dm_terms(x["position"], x["action_dist"], x["q_hat"])
    return Estimate(float(terms.mean()), _interval(terms, None, cfg), cfg.interval, len(terms))


def dr(reward, action, position, pscore, action_dist, q_hat, config: OpeConfig | None = None) -> Estimate:
    """Doubly robust: DM plus the importance-weighted residual of the reward model (obp: DoublyRobust, "dr")."""
    cfg = config or OpeConfig()
    x = _check_inputs(reward, action, position, pscore, action_dist, q_hat)
    w = importance_weights(x["action"], x["position"], x["pscore"], x["action_dist"])
    n = len(w)
    q_fact = x["q_hat"][np.arange(n), x["action"], x["position"]]
    terms = _dm_terms(x["position"], x["action_dist"], x["q_hat"]) + w * (x["reward"] - q_fact)
    return Estimate(float(terms.mean()), _interval(terms, None, cfg), cfg.interval, n, _weight_stats(w))


def estimate_all(reward, action, position, pscore, action_dist, q_hat=None,
                 config: OpeConfig | None = None) -> dict[str, Estimate]:
    """IPS and SNIPS, plus DM and DR when a reward model q_hat is given."""
    out = {"ips": ips(reward, action, position, pscore, action_dist, config),
           "snips": snips(reward, action, position, pscore, action_dist, config)}
    if q_hat is not None:
        out["dm"] = dm(position, action_dist, q_hat, config)
        out["dr"] = dr(reward, action, position, pscore, action_dist, q_hat, config)
    return out


def _weight_stats(w: np.ndarray) -> dict:
    """Effective sample size (sum w)^2 / sum w^2 and the largest weight: how far pi strays from the log."""
    sq = float((w**2).sum())
    return {"ess": float(w.sum() ** 2 / sq) if sq > 0 else 0.0, "max_weight": float(w.max())}


def fit_reward_table(reward, action, position, n_actions: int, n_positions: int, n_folds: int = 3,
                     prior_strength: float = 10.0, seed: int = 0) -> np.ndarray:
    """q_hat [n, n_actions, n_positions]: the click rate of each (action, position), cross-fitted.

    Rounds are split into `n_folds` random folds; a round's row is the table fitted on the other folds (so its own
    reward never enters its estimate, as with obp's `RegressionModel.fit_predict(n_folds=...)`). Each cell is
    shrunk towards the fold's overall rate with `prior_strength` pseudo-rounds, since most cells hold few clicks.
    n_folds=1 fits one table on all rounds. Context-free: right for context-free policies such as Bernoulli TS.
    """
    reward = np.asarray(reward, dtype=np.float64)
    action = np.asarray(action, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    n = len(reward)
    if n_folds < 1 or n_folds > n:
        raise ValueError(f"n_folds: must lie in [1, {n}], got {n_folds}")
    fold = np.random.default_rng(seed).permutation(n) % n_folds
    q_hat = np.empty((n, n_actions, n_positions))
    for k in range(n_folds):
        train = fold != k if n_folds > 1 else np.ones(n, dtype=bool)
        cells = action[train] * n_positions + position[train]
        clicks = np.bincount(cells, weights=reward[train], minlength=n_actions * n_positions)
        shown = np.bincount(cells, minlength=n_actions * n_positions)
        base = reward[train].mean()
        table = ((clicks + prior_strength * base) / (shown + prior_strength)).reshape(n_actions, n_positions)
        q_hat[fold == k] = table
    return q_hat


def bernoulli_ts_action_dist(alpha, beta, len_list: int, n_sim: int = 100_000, seed: int = 0,
                             n_rounds: int = 1) -> np.ndarray:
    """pi(a | pos) of Bernoulli Thompson sampling with Beta(alpha, beta) posteriors, by Monte Carlo.

    Each simulation draws one score per action and ranks the top `len_list`; pi(a | pos) is the share of
    simulations that put a at pos. Returned as a read-only broadcast of shape (n_rounds, n_actions, len_list), the
    layout of obp's `BernoulliTS(...).compute_batch_action_dist` (whose loop draws the same distribution).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.shape != beta.shape or alpha.ndim != 1:
        raise ValueError("alpha, beta: must be 1-dimensional arrays of the same length")
    if (alpha <= 0).any() or (beta <= 0).any():
        raise ValueError("alpha, beta: Beta parameters must be positive")
    n_actions = len(alpha)
    if not 1 <= len_list <= n_actions:
        raise ValueError(f"len_list: must lie in [1, {n_actions}], got {len_list}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_actions, len_list))
    chunk = 20_000
    for start in range(0, n_sim, chunk):
        m = min(chunk, n_sim - start)
        draws = rng.beta(alpha, beta, size=(m, n_actions))
        top = np.argsort(-draws, axis=1)[:, :len_list]
        for pos in range(len_list):
            counts[:, pos] += np.bincount(top[:, pos], minlength=n_actions)
    return np.broadcast_to(counts / n_sim, (n_rounds, n_actions, len_list))
