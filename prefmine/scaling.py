"""Summaries of scaling runs (bench.cluster_scale): a training run's rate from its epoch history, and one phase
against its baseline.

Rates leave out the first epoch when there are several: it carries the worker group's start-up (process group,
DeepSpeed's engine) that a longer run pays once.
"""

from __future__ import annotations


def training_summary(history: list[dict]) -> dict:
    """{samples_per_s, epoch_seconds, epoch_period_s, timed_epochs} of `cluster.ds_train`'s per-epoch history:
    means over the epochs after the first (over all, when there is one). samples_per_s and epoch_seconds are the
    training steps alone (samples_per_s counts every worker's samples); epoch_period_s is the wall time from one
    epoch's end to the next's (`ended_at`), so it includes evaluation and the checkpoint's write to the run
    storage (None with fewer than three epochs: the first period holds the first epoch's end)."""
    if not history:
        raise ValueError("no epochs in the history")
    timed = history[1:] if len(history) > 1 else history
    ends = [h["ended_at"] for h in history[1:] if "ended_at" in h]
    periods = [b - a for a, b in zip(ends, ends[1:])]
    return {"samples_per_s": round(sum(h["samples_per_s"] for h in timed) / len(timed), 2),
            "epoch_seconds": round(sum(h["epoch_seconds"] for h in timed) / len(timed), 3),
            "epoch_period_s": round(sum(periods) / len(periods), 3) if periods else None,
            "timed_epochs": len(timed)}


def compare(results: list[dict], phase: str, baseline: str, key: str) -> dict:
    """`phase` against `baseline` on `key` (samples_per_s or qps): both values and phase / baseline."""
    by_phase = {r["phase"]: r for r in results}
    if phase not in by_phase or baseline not in by_phase:
        raise KeyError(f"no result for {phase if phase not in by_phase else baseline}")
    a, b = by_phase[phase][key], by_phase[baseline][key]
    return {"phase": phase, "baseline": baseline, "metric": key, "value": a, "baseline_value": b,
            "ratio": round(a / b, 3) if a is not None and b else None}
