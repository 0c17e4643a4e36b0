"""Sponsored-item placement an advertiser can trust (Ray-free).

    config.py       AdsConfig: slots, per-slot reserves, pacing, frequency cap, calibration settings
    calibration.py  click-probability calibration fitted on held-out data (Platt or isotonic, picked by
                    cross-validated log loss), expected calibration error, reliability diagram; JSON + .npz
    auction.py      generalised second-price auction with per-slot reserve prices
    budget.py       per-campaign daily budgets: probabilistic pacing and an atomic, hard-stop ledger
    frequency.py    per-user, per-campaign frequency caps over a sliding window
    heldout.py      real held-out click labels from logged sequences (for fitting and checking calibration)
"""
