"""The bundle's click-probability calibration: fitted on held-out data when the ranker is trained, saved as the
optional bundle part ``ads/`` (calibrator.json + calibrator.npz, never a pickle), applied by Rank's auction.

What is calibrated is the probability Rank serves for a known user: the ranker's softmax over the catalogue that
the user's next interaction is the item (prefmine.serving.ranking.item_scores). Held-out labels come from the
validation split (each user's validation item: outside the ranker's training sequences, used only to pick its best
epoch; the test item stays untouched for evaluation) with the sampled-negative protocol of prefmine.ads.heldout: the user's real next item (a click)
beside `n_neg` random items outside the history (no click). The calibrated probability is therefore the click
rate of a candidate shown among `n_neg` + 1, the scale on which bids are compared, not a per-page CTR.

The users are split in two halves: the calibrator (prefmine.ads.calibration.fit_calibrator: the method with the
lowest cross-validated log loss) is fitted on one and judged on the other (ECE and log loss, raw and calibrated),
so the figures recorded in the manifest are out of sample. Cold-start probabilities (popularity shares) are not
ranker outputs and stay raw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefmine.ads.calibration import JSON_NAME, Calibrator, ece, fit_calibrator, log_loss
from prefmine.ads.config import AdsConfig
from prefmine.ads.heldout import labelled_pairs

PART = "ads"


def heldout_probabilities(ds, score_fn, phase: str, n_neg: int, max_users: int, seed: int = 0, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(served probability, click label, user row) of the held-out pairs of `phase`. score_fn(histories, times,
    events) -> scores over the catalogue (RankerRuntime.scores)."""
    from prefmine.serving.ranking import item_scores

    rng = np.random.default_rng(seed)
    users = ds.eval_users(phase)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    histories = [ds.history(u, phase) for u in users]
    times = [ds.history_times(u, phase) for u in users] if ds.train_times is not None else None
    events = [ds.history_events(u, phase) for u in users]
    rows, cands, labels = labelled_pairs(histories, ds.targets(phase)[users], ds.n_items, n_neg, rng)
    probs = np.zeros(len(rows), dtype=np.float64)
    for start in range(0, len(users), chunk):
        stop = min(start + chunk, len(users))
        scores = score_fn(histories[start:stop], times[start:stop] if times is not None else None,
                          events[start:stop])
        for r in range(start, stop):
            sel = np.flatnonzero(rows == r)
            probs[sel] = item_scores(scores[r - start], cands[sel])["probs"]
    return probs, labels, rows


def fit_bundle_calibration(ds, bundle: str | Path, config: AdsConfig | None = None, seed: int = 0) -> dict:
    """Fit the calibrator on half of the validation users, judge it on the other half, save it into
    ``<bundle>/ads/``; returns the figures (method, ECE and log loss raw and calibrated on the judged half).
    config: the tree's `ads` section (its calibration_* keys and ece_bins)."""
    from prefmine.ranker.runtime import RankerRuntime

    config = config or AdsConfig()
    n_neg = config.calibration_negatives
    p, y, rows = heldout_probabilities(ds, RankerRuntime(bundle).scores, "valid", n_neg,
                                       config.calibration_max_users, seed)
    half = np.random.default_rng(seed + 1).random(int(rows.max()) + 1 if len(rows) else 0) < 0.5
    fit, judge = half[rows], ~half[rows]
    cal = fit_calibrator(p[fit], y[fit], config.calibration_methods, config.calibration_folds, seed)
    cal.save(Path(bundle) / PART)
    bins = config.ece_bins
    return {"kind": "calibration", "method": cal.method, "phase": "valid", "negatives_per_positive": n_neg,
            "fit_rows": int(fit.sum()), "judged_rows": int(judge.sum()),
            "ece_raw": ece(p[judge], y[judge], bins), "ece_calibrated": ece(cal(p[judge]), y[judge], bins),
            "log_loss_raw": log_loss(p[judge], y[judge]), "log_loss_calibrated": log_loss(cal(p[judge]), y[judge])}


def load_bundle_calibrator(bundle: str | Path) -> Calibrator | None:
    """The bundle's calibrator, None for a bundle without the ``ads/`` part (raw probabilities are served)."""
    d = Path(bundle) / PART
    return Calibrator.load(d) if (d / JSON_NAME).is_file() else None


def judge_bundle_calibration(ds, bundle: str | Path, phase: str = "test", config: AdsConfig | None = None,
                             png: str | Path | None = None) -> dict | None:
    """The bundle's calibration judged on `phase` (the evaluation's test users): ECE and log loss of the raw and
    calibrated probabilities, and a reliability diagram at `png` when given; None without a calibration.
    config: default, the `ads` section the bundle was trained with (its manifest's config tree)."""
    from prefmine.ads.calibration import reliability_png
    from prefmine.bundle import read_manifest
    from prefmine.ranker.runtime import RankerRuntime

    cal = load_bundle_calibrator(bundle)
    if cal is None:
        return None
    if config is None:
        config = AdsConfig.of((read_manifest(bundle).get("config") or {}).get("ads"))
    n_neg, bins = config.calibration_negatives, config.ece_bins
    p, y, _ = heldout_probabilities(ds, RankerRuntime(bundle).scores, phase, n_neg, config.calibration_max_users)
    q = cal(p)
    if png is not None:
        reliability_png(png, {"raw": (p, y), f"calibrated ({cal.method})": (q, y)}, bins,
                        title=f"Rank click probabilities, {phase} users")
    return {"method": cal.method, "phase": phase, "rows": int(len(y)), "negatives_per_positive": n_neg,
            "ece_raw": ece(p, y, bins), "ece_calibrated": ece(q, y, bins),
            "log_loss_raw": log_loss(p, y), "log_loss_calibrated": log_loss(q, y)}
