"""The policy gate (prefmine.policy.gate): the learned policy is served only when its 95% interval lies above
the best heuristic's; heuristic slates order candidates as documented; the decision round-trips through the
bundle file and a tampered one is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefmine.policy.gate import GateDecision, decide, heuristic_slate, mix_chooser


def ev(**figs):
    return {k: {"return_mean": m, "ci95": c} for k, (m, c) in figs.items()}


def test_learned_served_only_outside_the_intervals():
    base = dict(greedy=(2.30, 0.05), popularity=(2.36, 0.05), mix=(2.40, 0.05))
    won = decide(ev(learned=(2.60, 0.05), **base), "learned", alpha=0.7)
    assert won.served == "learned" and won.uses_learned and won.best_heuristic == "mix" and won.alpha == 0.7
    overlap = decide(ev(learned=(2.48, 0.05), **base), "learned")  # 2.43 < 2.45: intervals touch
    assert overlap.served == "mix" and not overlap.uses_learned and "does not beat" in overlap.reason
    lost = decide(ev(learned=(3.051, 0.096), greedy=(3.2, 0.09), popularity=(3.364, 0.094)), "learned",
                  heuristics=("greedy", "popularity"))
    assert lost.served == "popularity"  # the demo's old figures: popularity would have been served
    assert decide(ev(**base), None).served == "mix"
    with pytest.raises(ValueError, match="heuristics"):
        decide(ev(learned=(1, 0)), "learned")


def test_heuristic_slates():
    cands = np.array([10, 11, 12, 13, 11])
    scores = np.array([4.0, 3.0, 2.0, 1.0, 0.5])
    log_pop = np.array([0.0, 1.0, 5.0, 2.0, 1.0])
    assert heuristic_slate("greedy", cands, scores, log_pop, 3).tolist() == [10, 11, 12]
    assert heuristic_slate("popularity", cands, scores, log_pop, 3).tolist() == [12, 13, 11]
    assert heuristic_slate("mix", cands, scores, log_pop, 4, alpha=1.0).tolist() == [10, 11, 12, 13]
    assert heuristic_slate("mix", cands, scores, log_pop, 4, alpha=0.0).tolist() == [12, 13, 11, 10]
    half = heuristic_slate("mix", cands, scores, log_pop, 1, alpha=0.5).tolist()
    assert half == [12]  # z-scores: 12 has (-0.45 + 1.60) / 2, the largest
    with pytest.raises(ValueError, match="known"):
        heuristic_slate("oracle", cands, scores, log_pop, 2)


def test_mix_chooser_masks_invalid_slots():
    class Env:
        cand = np.array([3, 1, 2, 0])
        cand_scores = np.array([1.0, 0.9, 0.8, -9.0])
        valid = np.array([True, True, True, False])

    log_pop = np.array([100.0, 0.0, 9.0, 1.0])  # item 0 most popular but its slot is padding
    assert mix_chooser(log_pop, 0.0)(Env, None, None) == 2
    assert mix_chooser(log_pop, 1.0)(Env, None, None) == 0


def test_decision_round_trips_and_bad_files_are_refused(tmp_path):
    d = decide(ev(learned=(1.0, 0.1), greedy=(2.0, 0.1), popularity=(1.5, 0.1), mix=(2.1, 0.1)), "learned", 0.3)
    d.save(tmp_path)
    back = GateDecision.load(tmp_path)
    assert back == d and back.served == "mix"
    assert GateDecision.load(tmp_path / "missing") is None
    (tmp_path / "gate.json").write_text(json.dumps({**d.to_dict(), "served": "rm -rf"}))
    with pytest.raises(ValueError, match="neither"):
        GateDecision.load(tmp_path)
