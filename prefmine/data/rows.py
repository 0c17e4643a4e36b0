"""Row checks shared by every raw source, and the bad-row policy (`--on-bad-rows error|skip`).

Every reader turns its file into batches of canonical raw rows (`RAW_COLUMNS`: raw user id, item id, Unix
seconds, event type, rating, review summary and text) with the record's line (`_line`) in its file, then calls
`check_rows`. A row is bad when a required id is empty, the timestamp is not a number, before 1990 or in the
future, the event type is unknown, or the rating lies outside the source's declared range. File-level problems
(empty file, truncated gzip, non-UTF-8 bytes) go through the same `BadRows` reporter.

`BadRows` either raises a `RawDataError` naming the file, line and field (mode `error`, the default: the first bad
row in file order stops the run), or counts the row by reason and keeps a few examples for the manifest (mode
`skip`). Missing required columns are always an error: skipping a whole file silently would hide a broken export.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

EVENTS = ("view", "click", "cart", "buy", "rate")
MIN_TS = 631_152_000  # 1990-01-01T00:00:00Z
RAW_COLUMNS = ("user", "item", "ts", "event", "rating", "summary", "text")
MAX_EXAMPLES = 10


class RawDataError(ValueError):
    """A raw file is missing or malformed; the message names the file, line and field."""


@dataclass
class RowRules:
    """What a valid row is for one source: the declared rating range, the time window, how duplicates count."""

    rating_range: tuple[float, float] = (1.0, 5.0)
    min_ts: int = MIN_TS
    max_ts: int = field(default_factory=lambda: int(time.time()) + 86_400)
    check_ts: bool = True
    # "bad": a repeated (user, item, timestamp, event) is a bad row (the platform's own log: a double-sent event).
    # "keep": published research data sets keep them, as their benchmark protocol counts every row.
    duplicates: str = "bad"


class BadRows:
    """Raises on the first bad row (`error`) or counts bad rows by reason with a few examples (`skip`)."""

    def __init__(self, mode: str = "error"):
        if mode not in ("error", "skip"):
            raise RawDataError(f"--on-bad-rows must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def bad(self, where: str, field_name: str | None, problem: str, reason: str, n: int = 1) -> None:
        msg = f"{where}: field {field_name!r}: {problem}" if field_name else f"{where}: {problem}"
        if self.mode == "error":
            raise RawDataError(msg + " (rerun with --on-bad-rows skip to skip and count such rows)")
        self.counts[reason] += n
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(msg)

    def merge(self, counts: dict, examples: list[str]) -> None:
        self.counts.update(counts)
        self.examples.extend(examples[: MAX_EXAMPLES - len(self.examples)])

    def summary(self) -> dict:
        return {"mode": self.mode, "skipped": int(sum(self.counts.values())),
                "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}


def _as_number(col: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numeric values and a mask of entries that were present but not numbers."""
    if pd.api.types.is_numeric_dtype(col):
        return col.astype("float64"), np.zeros(len(col), dtype=bool)
    num = pd.to_numeric(col, errors="coerce")
    present = col.notna().to_numpy() & (col.astype(str).str.strip() != "").to_numpy()
    return num.astype("float64"), present & num.isna().to_numpy()


def check_rows(df: pd.DataFrame, path, rules: RowRules, bad: BadRows, names: dict[str, str]) -> pd.DataFrame:
    """Validate and normalise one batch of raw rows; returns the good rows with typed columns.

    `names` maps canonical columns to the source's own field names, so messages name what the user's file calls
    the field (`overall`, `event_type`, ...). `df["_line"]` holds each record's line (or row) number in `path`.
    """
    n = len(df)
    problems: list[tuple[np.ndarray, str, str, str]] = []  # (mask, canonical field, reason, problem text)
    for col in ("user", "item"):
        values = df[col]
        empty = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        problems.append((empty, col, f"missing_{col}", "empty or missing id"))
    ts, ts_bad = _as_number(df["ts"])
    problems.append((ts_bad | ts.isna().to_numpy(), "ts", "bad_timestamp", "missing or not a Unix timestamp"))
    if rules.check_ts:
        tsv = ts.to_numpy()
        problems.append((tsv < rules.min_ts, "ts", "timestamp_before_1990", "timestamp before 1990-01-01"))
        problems.append((tsv > rules.max_ts, "ts", "timestamp_in_future", "timestamp in the future"))
    event = df["event"].astype(str).str.strip().str.lower()
    problems.append((~event.isin(EVENTS).to_numpy(), "event", "unknown_event",
                     f"unknown event type (expected one of {', '.join(EVENTS)})"))
    rating, rating_bad = _as_number(df["rating"])
    lo, hi = rules.rating_range
    rv = rating.to_numpy()
    with np.errstate(invalid="ignore"):
        out_of_range = ~np.isnan(rv) & ((rv < lo) | (rv > hi))
    problems.append((rating_bad, "rating", "bad_rating", "not a number"))
    problems.append((out_of_range, "rating", "rating_out_of_range", f"outside the declared range [{lo:g}, {hi:g}]"))

    lines = df["_line"].to_numpy()
    drop = np.zeros(n, dtype=bool)
    if bad.mode == "error":
        first = None
        for mask, col, _, text in problems:
            if mask.any():
                i = int(np.flatnonzero(mask)[0])
                if first is None or lines[i] < lines[first[0]]:
                    first = (i, col, text)
        if first is not None:
            i, col, text = first
            value = df[col].iloc[i]
            bad.bad(f"{path}:{lines[i]}", names.get(col, col), f"{text} (value {str(value)[:60]!r})", col)
    else:
        for mask, col, reason, text in problems:
            new = mask & ~drop
            if new.any():
                i = int(np.flatnonzero(new)[0])
                bad.bad(f"{path}:{lines[i]}", names.get(col, col), f"{text} (value {str(df[col].iloc[i])[:60]!r})",
                        reason, n=int(new.sum()))
            drop |= mask
    keep = ~drop
    out = pd.DataFrame({
        "user": df["user"].astype(str).str.strip().to_numpy()[keep],
        "item": df["item"].astype(str).str.strip().to_numpy()[keep],
        "ts": np.floor(ts.to_numpy()[keep]).astype("int64"),
        "event": event.to_numpy()[keep],
        "rating": rating.to_numpy()[keep].astype("float32"),
        "summary": df["summary"].to_numpy()[keep],
        "text": df["text"].to_numpy()[keep],
        "_line": lines[keep].astype("int64"),
    })
    for flag in ("is_inter", "is_review"):
        out[flag] = df[flag].to_numpy()[keep]
    return out
