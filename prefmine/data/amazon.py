"""Loader for Amazon Review Data (2018) categories (Ni, Li, McAuley, EMNLP 2019).

Reads `<raw>/<Category>/`: the ratings-only CSV `<Category>.csv` (asin,reviewerID,rating,unix_ts, no header) when
present, the 5-core reviews `<Category>_5.json.gz` and the metadata `meta_<Category>.json.gz` when present.
Interactions are every rating of the CSV (or, without it, every review); reviews carry the text. Known dirt handled
here: HTML titles and entities (cleaned; an empty title falls back to the brand and categories), duplicate
metadata rows (first kept), items without metadata (text from their reviews' summaries), missing review text.
reviewerName is never read into a table.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.clean import clean_list, clean_text, item_text


class RawDataError(ValueError):
    """A raw file is missing or malformed; the message names the file, line and field."""


def _json_lines(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise RawDataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e


def read_reviews(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, r in _json_lines(path):
        for field in ("reviewerID", "asin", "overall", "unixReviewTime"):
            if field not in r:
                raise RawDataError(f"{path}:{lineno}: missing field {field!r}")
        rows.append((r["reviewerID"], r["asin"], int(r["unixReviewTime"]), float(r["overall"]),
                     clean_text(r.get("summary")), clean_text(r.get("reviewText"))))
    return pd.DataFrame(rows, columns=["user", "item", "ts", "rating", "summary", "text"])


def read_ratings_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, header=None, names=["item", "user", "rating", "ts"],
                     dtype={"item": str, "user": str, "rating": "float32", "ts": "int64"})
    return df[["user", "item", "ts", "rating"]]


def read_metadata(path: Path) -> pd.DataFrame:
    seen: set[str] = set()
    rows = []
    for lineno, m in _json_lines(path):
        asin = m.get("asin")
        if not asin:
            raise RawDataError(f"{path}:{lineno}: missing field 'asin'")
        if asin in seen:
            continue
        seen.add(asin)
        categories = clean_list(m.get("category"))
        brand = clean_text(m.get("brand"))
        title = clean_text(m.get("title"))
        if not title:
            title = " ".join(p for p in [brand, categories[-1] if categories else ""] if p)
        rows.append((asin, title, brand, categories, clean_text(m.get("description"))))
    return pd.DataFrame(rows, columns=["item", "title", "brand", "categories", "description"])


def load(raw: Path, category: str) -> dict[str, pd.DataFrame]:
    """Raw-id tables: interactions (user, item, ts, event, rating), items, reviews."""
    folder = Path(raw) / category
    if not folder.is_dir():
        raise RawDataError(f"no folder {folder} (expected <raw>/<Category>/ of Amazon 2018 files)")
    reviews_path = folder / f"{category}_5.json.gz"
    ratings_path = folder / f"{category}.csv"
    meta_path = folder / f"meta_{category}.json.gz"
    if not reviews_path.exists() and not ratings_path.exists():
        raise RawDataError(f"{folder}: neither {reviews_path.name} nor {ratings_path.name} exists")

    reviews = read_reviews(reviews_path) if reviews_path.exists() else pd.DataFrame(
        columns=["user", "item", "ts", "rating", "summary", "text"])
    if ratings_path.exists():
        inter = read_ratings_csv(ratings_path)
    else:
        inter = reviews[["user", "item", "ts", "rating"]].copy()
    inter["event"] = "rate"

    meta = read_metadata(meta_path) if meta_path.exists() else pd.DataFrame(
        columns=["item", "title", "brand", "categories", "description"])
    items = pd.DataFrame({"item": pd.unique(inter["item"])}).merge(meta, on="item", how="left")
    # Items without metadata: describe them by what reviewers said.
    summaries = reviews.groupby("item")["summary"].apply(lambda s: " . ".join(t for t in s if t)[:500])
    missing = items["title"].isna()
    items.loc[missing, "title"] = ""
    items.loc[missing, "brand"] = ""
    items.loc[missing, "description"] = items.loc[missing, "item"].map(summaries).fillna("")
    items["categories"] = items["categories"].apply(lambda c: list(c) if isinstance(c, (list, np.ndarray)) else [])
    items = items.fillna({"title": "", "brand": "", "description": ""})
    items["text"] = [item_text(t, b, c, d) for t, b, c, d in
                     zip(items["title"], items["brand"], items["categories"], items["description"])]
    return {"interactions": inter, "items": items, "reviews": reviews}
