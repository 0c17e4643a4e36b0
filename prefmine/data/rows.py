"""Row checks shared by every raw source, and the bad-row policy (`--on-bad-rows error|skip`).

Every reader turns its file into batches of canonical raw rows (`RAW_COLUMNS`: raw user id, item id, Unix
seconds, event type, rating, review summary and text) with the record's line (`_line`) in its file, then calls
`check_rows`. Ids are normalised first (`privacy.normalise_id`: whitespace stripped, Unicode NFC), the same way
serving and erasure normalise them. A row is bad when a required id is empty, not text or a number, longer than
`MAX_ID_CHARS` or holds a control character (NUL, newline, ...), the timestamp is not a number, before 1990 or in the
future, the event type is unknown, the rating is not a finite number or lies outside the source's declared range,
or a `rate` interaction has no rating. File-level problems (empty file, truncated gzip, non-UTF-8 bytes, records
over the size caps) go through the same `BadRows` reporter.

`BadRows` either raises a `RawDataError` naming the file, line and field (mode `error`, the default: the first bad
row in file order stops the run), or counts the row by reason and keeps a few examples for the manifest (mode
`skip`). Missing required columns are always an error: skipping a whole file silently would hide a broken export.
With `keep_all=True` every bad row's place is kept (`BadRows.where`), for tools and tests that need them all.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prefmine.data.privacy import normalise_ids

EVENTS = ("view", "click", "cart", "buy", "rate")
MIN_TS = 631_152_000  # 1990-01-01T00:00:00Z
RAW_COLUMNS = ("user", "item", "ts", "event", "rating", "summary", "text")
MAX_EXAMPLES = 10
MAX_ID_CHARS = 512
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0/C1 controls and lone surrogates
_ASCII_SPACE = re.compile("[\x00-\x20\x7f]")  # ASCII controls and whitespace: absent, an ASCII id is canonical


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
    # A `rate` interaction must carry its rating (reviews that are not interactions may lack one).
    rate_needs_rating: bool = True


class BadRows:
    """Raises on the first bad row (`error`) or counts bad rows by reason with a few examples (`skip`)."""

    def __init__(self, mode: str = "error", keep_all: bool = False):
        if mode not in ("error", "skip"):
            raise RawDataError(f"--on-bad-rows must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.counts: Counter = Counter()
        self.examples: list[str] = []
        self.where: list[tuple[str, str]] | None = [] if keep_all else None  # (place, reason) of every bad row

    def bad(self, where: str, field_name: str | None, problem: str, reason: str, n: int = 1,
            also: list[str] = ()) -> None:
        """Report a bad row at `where`; `n` > 1 counts `n` rows of the same kind, the others at `also`."""
        msg = f"{where}: field {field_name!r}: {problem}" if field_name else f"{where}: {problem}"
        if self.mode == "error":
            raise RawDataError(msg + " (rerun with --on-bad-rows skip to skip and count such rows)")
        self.counts[reason] += n
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(msg)
        if self.where is not None:
            self.where.extend((w, reason) for w in (where, *also))

    def merge(self, counts: dict, examples: list[str]) -> None:
        self.counts.update(counts)
        self.examples.extend(examples[: MAX_EXAMPLES - len(self.examples)])

    def summary(self) -> dict:
        return {"mode": self.mode, "skipped": int(sum(self.counts.values())),
                "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}


def _as_number(col: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numeric values and a mask of entries that were present but not finite numbers."""
    if pd.api.types.is_numeric_dtype(col):
        num = col.astype("float64")
        return num, np.isinf(num.to_numpy())
    num = pd.to_numeric(col, errors="coerce").astype("float64")
    present = col.notna().to_numpy() & (col.astype(str).str.strip() != "").to_numpy()
    return num, present & ~np.isfinite(num.to_numpy())


def _ids(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised ids and masks: missing/empty, not text or a number, too long, control characters."""
    raw = col.to_numpy(dtype=object)
    n = len(raw)
    missing = pd.isna(col).to_numpy()
    wrong_type = np.zeros(n, dtype=bool)
    control = np.zeros(n, dtype=bool)
    if not missing.any() and pd.api.types.infer_dtype(raw, skipna=False) == "string":
        joined = "".join(raw)
        if joined.isascii() and not _ASCII_SPACE.search(joined):  # the common case: nothing to normalise or reject
            too_long = np.zeros(n, dtype=bool)
            if len(joined) > MAX_ID_CHARS:
                too_long = col.str.len().to_numpy() > MAX_ID_CHARS
            return raw, raw == "", wrong_type, too_long, control
    if pd.api.types.infer_dtype(raw, skipna=True) != "string":
        raw = raw.copy()
        for i, v in enumerate(raw):
            if missing[i] or isinstance(v, str):
                continue
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                wrong_type[i] = True
            else:
                raw[i] = str(v)
    ok = ~(missing | wrong_type)
    out = np.full(n, "", dtype=object)
    out[ok] = normalise_ids(raw[ok])
    joined = "".join(out)
    if _CONTROL.search(joined):
        control = np.fromiter((_CONTROL.search(v) is not None for v in out), dtype=bool, count=n)
    too_long = np.zeros(n, dtype=bool)
    if len(joined) > MAX_ID_CHARS:
        too_long = np.fromiter(map(len, out), dtype=np.int64, count=n) > MAX_ID_CHARS
    return out, missing | (ok & (out == "")), wrong_type, too_long, control


def check_rows(df: pd.DataFrame, path, rules: RowRules, bad: BadRows, names: dict[str, str]) -> pd.DataFrame:
    """Validate and normalise one batch of raw rows; returns the good rows with typed columns.

    `names` maps canonical columns to the source's own field names, so messages name what the user's file calls
    the field (`overall`, `event_type`, ...). `df["_line"]` holds each record's line (or row) number in `path`.
    """
    n = len(df)
    problems: list[tuple[np.ndarray, str, str, str]] = []  # (mask, canonical field, reason, problem text)
    ids = {}
    for col in ("user", "item"):
        ids[col], empty, wrong_type, too_long, control = _ids(df[col])
        problems.append((empty, col, f"missing_{col}", "empty or missing id"))
        problems.append((wrong_type, col, "bad_id", "an id must be text or a number"))
        problems.append((too_long, col, "bad_id", f"id longer than {MAX_ID_CHARS} characters"))
        problems.append((control, col, "bad_id", "id contains a control character (NUL, newline, ...)"))
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
    problems.append((rating_bad, "rating", "bad_rating", "not a finite number"))
    problems.append((out_of_range, "rating", "rating_out_of_range", f"outside the declared range [{lo:g}, {hi:g}]"))
    if rules.rate_needs_rating:
        unrated = np.isnan(rv) & (event.to_numpy() == "rate") & df["is_inter"].to_numpy().astype(bool)
        problems.append((unrated & ~rating_bad, "rating", "missing_rating", "a rate event without a rating"))

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
                rows = np.flatnonzero(new)
                i = int(rows[0])
                also = [f"{path}:{x}" for x in lines[rows[1:]]] if bad.where is not None else []
                bad.bad(f"{path}:{lines[i]}", names.get(col, col), f"{text} (value {str(df[col].iloc[i])[:60]!r})",
                        reason, n=len(rows), also=also)
            drop |= mask
    keep = ~drop
    out = pd.DataFrame({
        "user": ids["user"][keep],
        "item": ids["item"][keep],
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
