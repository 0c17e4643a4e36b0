"""Calibrated click probabilities: a monotone map from a model's raw probability to the observed click rate.

Why: an auction ranks by bid x pCTR and prices by ratios of pCTRs, and an advertiser pays per click; a model
whose probabilities are off by a factor (a ranker trained on a softmax, a click model fitted with 1 positive per
4 sampled negatives) misallocates slots between ads of different bid levels and makes reserves meaningless.

Two maps, both fitted on held-out (probability, click) pairs the model never trained on:
  platt     p' = sigmoid(a * logit(p) + b)                   (two parameters, Newton's method on the log loss)
  isotonic  p' = the non-decreasing step function of p with least squared error (pool-adjacent-violators),
            evaluated by linear interpolation between its steps
plus `identity`. `fit_calibrator` picks the one with the lowest log loss under k-fold cross-validation on the
held-out pairs (a map is never judged on the pairs it was fitted on) and refits it on all of them.

Saved as calibrator.json (method, Platt parameters, selection log losses) + calibrator.npz (isotonic knots),
read back with allow_pickle=False.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EPS = 1e-6
JSON_NAME = "calibrator.json"
NPZ_NAME = "calibrator.npz"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log likelihood of binary labels y under probabilities p (clipped to [1e-6, 1 - 1e-6])."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict:
    """Equal-width bins of predicted probability: per bin count, mean prediction and observed click rate."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    safe = np.maximum(count, 1)
    return {"edges": np.linspace(0, 1, bins + 1), "count": count, "mean_pred": sum_p / safe, "rate": sum_y / safe}


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width bins of |mean prediction - click rate| x bin share."""
    r = reliability(p, y, bins)
    n = r["count"].sum()
    if n == 0:
        raise ValueError("ece: no predictions")
    return float((np.abs(r["mean_pred"] - r["rate"]) * r["count"]).sum() / n)


def fit_platt(p: np.ndarray, y: np.ndarray, steps: int = 100, l2: float = 1e-6) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(p) + b) minimising the log loss (Newton's method, tiny ridge for stability)."""
    x = _logit(p)
    y = np.asarray(y, dtype=np.float64)
    a, b = 1.0, 0.0
    for _ in range(steps):
        q = _sigmoid(a * x + b)
        g = np.array([((q - y) * x).mean() + l2 * a, (q - y).mean()])
        w = q * (1 - q)
        h = np.array([[(w * x * x).mean() + l2, (w * x).mean()], [(w * x).mean(), w.mean() + l2]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of the least-squares non-decreasing fit of y on p (pool adjacent violators).

    Each pooled block becomes one knot at its mean p; predictions interpolate between knots, flat outside.
    """
    order = np.argsort(np.asarray(p, dtype=np.float64), kind="stable")
    xs = np.asarray(p, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    # identical p values form one block first (so ties get one value)
    ux, start = np.unique(xs, return_index=True)
    wsum = np.diff(np.r_[start, len(xs)]).astype(np.float64)
    ysum = np.add.reduceat(ys, start)
    xsum = ux * wsum
    bw, by, bx = [], [], []
    for w, s, sx in zip(wsum, ysum, xsum):
        bw.append(w)
        by.append(s)
        bx.append(sx)
        while len(bw) > 1 and by[-2] / bw[-2] >= by[-1] / bw[-1]:
            w2, s2, x2 = bw.pop(), by.pop(), bx.pop()
            bw[-1] += w2
            by[-1] += s2
            bx[-1] += x2
    w = np.asarray(bw)
    return np.asarray(bx) / w, np.asarray(by) / w


@dataclass
class Calibrator:
    """A fitted map from raw to calibrated click probability (`method`: identity, platt or isotonic)."""

    method: str = "identity"
    platt: tuple[float, float] = (1.0, 0.0)
    knots_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    knots_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    selection: dict = field(default_factory=dict)  # cross-validated log loss of every candidate method

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity":
            return np.clip(p, 0.0, 1.0)
        if self.method == "platt":
            return _sigmoid(self.platt[0] * _logit(p) + self.platt[1])
        if self.method == "isotonic":
            return np.clip(np.interp(p, self.knots_x, self.knots_y), 0.0, 1.0)
        raise ValueError(f"Calibrator.method: unknown {self.method!r}")

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / NPZ_NAME, knots_x=self.knots_x.astype(np.float64), knots_y=self.knots_y.astype(np.float64))
        (d / JSON_NAME).write_text(json.dumps({"method": self.method, "platt": list(self.platt),
                                               "selection": self.selection}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Calibrator:
        d = Path(directory)
        meta = json.loads((d / JSON_NAME).read_text())
        with np.load(d / NPZ_NAME, allow_pickle=False) as z:
            kx, ky = z["knots_x"], z["knots_y"]
        cal = cls(method=str(meta["method"]), platt=(float(meta["platt"][0]), float(meta["platt"][1])),
                  knots_x=kx, knots_y=ky, selection=dict(meta.get("selection", {})))
        if cal.method not in ("identity", "platt", "isotonic"):
            raise ValueError(f"{d / JSON_NAME}: field 'method': unknown {cal.method!r}")
        if cal.method == "isotonic" and (len(kx) == 0 or len(kx) != len(ky) or np.any(np.diff(kx) < 0)):
            raise ValueError(f"{d / NPZ_NAME}: field 'knots_x'/'knots_y': isotonic knots missing or unsorted")
        return cal


def _fit(method: str, p: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "identity":
        return Calibrator("identity")
    if method == "platt":
        return Calibrator("platt", platt=fit_platt(p, y))
    if method == "isotonic":
        kx, ky = fit_isotonic(p, y)
        return Calibrator("isotonic", knots_x=kx, knots_y=ky)
    raise ValueError(f"calibration method: unknown {method!r}")


def fit_calibrator(p: np.ndarray, y: np.ndarray, methods=("identity", "platt", "isotonic"), folds: int = 3,
                   seed: int = 0) -> Calibrator:
    """The method with the lowest k-fold cross-validated log loss on held-out (p, y), refitted on all of it.

    p: raw probabilities in [0, 1]; y: 0/1 clicks. Rows with a non-finite or out-of-range p or a label other
    than 0/1 are rejected with an error naming the field (calibration data is ours, not a client's).
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"fit_calibrator: p {p.shape} and y {y.shape} must be equal-length vectors")
    if not np.all(np.isfinite(p) & (p >= 0) & (p <= 1)):
        raise ValueError("fit_calibrator: field 'p': probabilities must be finite and in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("fit_calibrator: field 'y': labels must be 0 or 1")
    if len(y) < 2 * folds or y.min() == y.max():
        raise ValueError(f"fit_calibrator: need >= {2 * folds} rows with both clicks and non-clicks")
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    scores = {}
    for m in methods:
        losses = []
        for k in range(folds):
            tr, te = fold != k, fold == k
            losses.append(log_loss(_fit(m, p[tr], y[tr])(p[te]), y[te]) * te.sum())
        scores[m] = float(np.sum(losses) / len(y))
    best = min(scores, key=scores.get)
    cal = _fit(best, p, y)
    cal.selection = {"cv_log_loss": scores, "folds": folds, "rows": int(len(y))}
    return cal


def reliability_png(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 15,
                    title: str = "Reliability") -> None:
    """Reliability diagram (observed click rate against mean prediction per bin) of each named (p, y) curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = 0.0
    for name, (p, y) in curves.items():
        r = reliability(p, y, bins)
        m = r["count"] > 0
        ax.plot(r["mean_pred"][m], r["rate"][m], marker="o", label=f"{name} (ECE {ece(p, y, bins):.4f})")
        top = max(top, float(r["mean_pred"][m].max()), float(r["rate"][m].max()))
    top = min(1.0, top * 1.05 + 1e-3)
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted click probability (bin)")
    ax.set_ylabel("observed click rate (bin)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
