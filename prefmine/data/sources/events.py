"""The platform's own event log as a prefmine source (what `prefmine data synth` writes).

Layout under `--raw DIR`: the events in `DIR/events/` (any number of `*.csv`, `*.csv.gz` or `*.parquet` files,
read in name order) or a single `DIR/events.csv|events.csv.gz|events.parquet`; the item catalogue, optional, in
`DIR/items.parquet` or `DIR/items.csv`.

Events schema (CSV with a header row, or Parquet with these column names):

| column | type | required | meaning |
|---|---|---|---|
| user_id | string | yes | the platform's user id (pseudonymised at preparation; never stored raw) |
| item_id | string | yes | the item (product) id |
| timestamp | int64 Unix seconds, or ISO 8601 | yes | when it happened; 1990-01-01 .. now |
| event_type | string | yes | view, click, cart, buy or rate |
| rating | float | no | the rating of a rate event, within the declared range (`--rating-range`, default 1-5) |
| review_title | string | no | review summary (rate events) |
| review_text | string | no | review body (rate events); scrubbed of e-mails, phones, URLs, card numbers |

Catalogue schema: item_id (required), title, description, brand, categories (a path joined by " > " or "|"),
and for content kind (product, article, video, ...; empty: product) and published (Unix seconds or ISO 8601:
when the content appeared; serving's recency decay reads it). Both kept as item columns when present.
A repeated (user_id, item_id, timestamp, event_type) is a bad row: in the platform's own log it is a double-sent
event. Large Parquet files are split into chunks of row groups so several workers read one file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.clean import clean_text
from prefmine.data.privacy import normalise_ids
from prefmine.data.readers.blocks import LIMITS, ReadLimits
from prefmine.data.readers.delimited import read_delimited
from prefmine.data.readers.parquet import parquet_row_groups, read_parquet
from prefmine.data.rows import BadRows, RawDataError, RowRules

REQUIRED = ("user_id", "item_id", "timestamp", "event_type")
OPTIONAL = ("rating", "review_title", "review_text")
NAMES = {"user": "user_id", "item": "item_id", "ts": "timestamp", "event": "event_type", "rating": "rating",
         "summary": "review_title", "text": "review_text"}
SUFFIXES = (".csv", ".csv.gz", ".parquet")
ROW_GROUPS_PER_CHUNK = 4
NAME = "events"
LAYOUT = "<raw>/events/*.csv|*.csv.gz|*.parquet or <raw>/events.*, optional <raw>/items.parquet|csv"
DOWNLOADABLE = False


def rules() -> RowRules:
    return RowRules(rating_range=(1.0, 5.0), duplicates="bad")


def _is_events_file(p: Path) -> bool:
    return p.is_file() and any(p.name.endswith(s) for s in SUFFIXES) and not p.name.startswith(".")


def event_files(raw: Path) -> list[Path]:
    raw = Path(raw)
    if (raw / "events").is_dir():
        files = sorted(p for p in (raw / "events").iterdir() if _is_events_file(p))
    else:
        files = [raw / f"events{s}" for s in SUFFIXES if (raw / f"events{s}").is_file()]
    if not files:
        raise RawDataError(f"{raw}: no event log (expected {raw}/events/*.csv|*.csv.gz|*.parquet or "
                           f"{raw}/events.csv|events.parquet)")
    return files


def dataset_name(raw: Path, category: str | None) -> str | None:
    return category


def time_kind(chunks: list[dict]) -> str:
    return "timestamps"


def plan(raw: Path, category: str | None) -> list[dict]:
    chunks = []
    for path in event_files(raw):
        if path.name.endswith(".parquet") and path.stat().st_size > 0:
            try:
                n = parquet_row_groups(path)
            except Exception as e:  # noqa: BLE001 - reported with the file name
                raise RawDataError(f"{path}: not a readable Parquet file ({e})") from e
            for start in range(0, max(n, 1), ROW_GROUPS_PER_CHUNK):
                chunks.append({"path": str(path), "kind": "both", "names": NAMES,
                               "row_groups": [start, min(start + ROW_GROUPS_PER_CHUNK, n)]})
        else:
            chunks.append({"path": str(path), "kind": "both", "names": NAMES})
    return chunks


def _timestamps(col: pd.Series) -> pd.Series:
    """Unix seconds from ints, floats, Arrow timestamps or ISO 8601 strings; unparseable values stay as they
    were so the row check names them."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return _epoch_seconds(col)
    if pd.api.types.is_numeric_dtype(col):
        return col
    num = pd.to_numeric(col, errors="coerce")
    todo = (num.isna() & col.notna()).to_numpy()
    if not todo.any():
        return num
    parsed = pd.to_datetime(col.where(todo), errors="coerce", utc=True, format="ISO8601")
    ok = todo & parsed.notna().to_numpy()
    out = np.array(num.astype(object).to_numpy(), dtype=object, copy=True)
    out[ok] = _epoch_seconds(parsed[ok]).to_numpy()
    raw = col.to_numpy()
    out[todo & ~ok] = raw[todo & ~ok]
    return pd.Series(out, index=col.index)


def _epoch_seconds(col: pd.Series) -> pd.Series:
    if col.dt.tz is None:
        col = col.dt.tz_localize("UTC")
    return (col - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def read_chunk(chunk: dict, bad: BadRows, limits: ReadLimits = LIMITS) -> Iterator[pd.DataFrame]:
    path = Path(chunk["path"])
    if path.name.endswith(".parquet"):
        batches = read_parquet(path, bad, REQUIRED, OPTIONAL, tuple(chunk["row_groups"]) if "row_groups" in chunk
                               else None)
    else:
        batches = read_delimited(path, bad, REQUIRED, OPTIONAL, limits=limits)
    for df in batches:
        summary = df["review_title"] if "review_title" in df else pd.Series(None, index=df.index, dtype=object)
        text = df["review_text"] if "review_text" in df else pd.Series(None, index=df.index, dtype=object)
        has_text = (summary.fillna("").astype(str).str.len() > 0) | (text.fillna("").astype(str).str.len() > 0)
        yield pd.DataFrame({
            "user": df["user_id"], "item": df["item_id"], "ts": _timestamps(df["timestamp"]),
            "event": df["event_type"], "rating": df["rating"] if "rating" in df else np.nan,
            "summary": summary.where(has_text, None), "text": text.where(has_text, None), "_line": df["_line"],
            "is_inter": True, "is_review": has_text.to_numpy()})


def catalogue(raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
    raw = Path(raw)
    cols = ["item", "title", "brand", "categories", "description"]
    optional = ("title", "description", "brand", "categories", "kind", "published")
    if (raw / "items.parquet").is_file():
        frames = list(read_parquet(raw / "items.parquet", bad, ("item_id",), optional))
    elif (raw / "items.csv").is_file():
        frames = list(read_delimited(raw / "items.csv", bad, ("item_id",), optional))
    else:
        return pd.DataFrame(columns=cols)
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)

    def text(name):
        return df[name].map(clean_text).to_numpy() if name in df else [""] * len(df)

    def split_path(v) -> list[str]:
        if isinstance(v, (list, tuple, np.ndarray)):
            return [clean_text(x) for x in v if clean_text(x)]
        s = clean_text(v)
        sep = " > " if " > " in s else "|"
        return [p.strip() for p in s.split(sep) if p.strip()]

    cats = df["categories"].map(split_path).to_numpy() if "categories" in df else [[] for _ in range(len(df))]
    out = pd.DataFrame({"item": normalise_ids(df["item_id"].astype(str)), "title": text("title"), "brand": text("brand"),
                        "categories": list(cats), "description": text("description")})
    if "kind" in df:  # content: its kind and publication time (unparseable times: unknown, NaN)
        out["kind"] = [k.lower() or "product" for k in text("kind")]
    if "published" in df:
        out["published"] = pd.to_numeric(_timestamps(df["published"]), errors="coerce").to_numpy(np.float64)
    return out
