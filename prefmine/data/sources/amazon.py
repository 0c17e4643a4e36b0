"""Amazon Review Data (2018) categories (Ni, Li, McAuley, EMNLP 2019) as a prefmine source.

Reads `<raw>/<Category>/`: the ratings-only CSV `<Category>.csv` (asin,reviewerID,rating,unix_ts, no header) when
present, the 5-core reviews `<Category>_5.json.gz` and the metadata `meta_<Category>.json.gz` when present.
Interactions are every rating of the CSV (or, without it, every review); reviews carry the text. Reviews-only
categories (All_Beauty, AMAZON_FASHION: no metadata file) work: item text then comes from the items' reviews.
Known dirt handled here: HTML titles and entities (cleaned; an empty title falls back to the brand and categories),
duplicate metadata rows (first kept), missing review text, repeated ratings (kept and counted: the benchmark
protocol counts every row). reviewerName is never read into a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from prefmine.data.clean import clean_list, clean_text
from prefmine.data.privacy import normalise_id
from prefmine.data.readers.blocks import LIMITS, ReadLimits
from prefmine.data.readers.delimited import read_delimited
from prefmine.data.readers.json_lines import read_json_lines
from prefmine.data.rows import BadRows, RawDataError, RowRules

__all__ = ["RawDataError", "plan", "read_chunk", "catalogue", "rules"]

CSV_COLUMNS = ["asin", "reviewerID", "rating", "unix_ts"]
CSV_NAMES = {"user": "reviewerID", "item": "asin", "ts": "unix_ts", "rating": "rating"}
JSON_NAMES = {"user": "reviewerID", "item": "asin", "ts": "unixReviewTime", "rating": "overall"}
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
NAME = "amazon2018"
LAYOUT = "<raw>/<Category>/: <Category>.csv, <Category>_5.json.gz, meta_<Category>.json.gz"
DOWNLOADABLE = True


def rules() -> RowRules:
    return RowRules(rating_range=(1.0, 5.0), duplicates="keep")


def _folder(raw: Path, category: str | None) -> Path:
    if not category:
        raise RawDataError("--category is required for --source amazon2018 (e.g. Magazine_Subscriptions)")
    folder = Path(raw) / category
    if not folder.is_dir():
        raise RawDataError(f"no folder {folder} (expected <raw>/<Category>/ of Amazon 2018 files)")
    return folder


def dataset_name(raw: Path, category: str | None) -> str | None:
    return category


def time_kind(chunks: list[dict]) -> str:
    return "timestamps"


def plan(raw: Path, category: str | None) -> list[dict]:
    """Chunks to read: the ratings CSV (interactions) and the 5-core reviews (reviews, and interactions without
    a CSV)."""
    folder = _folder(raw, category)
    ratings, reviews = folder / f"{category}.csv", folder / f"{category}_5.json.gz"
    if not ratings.exists() and not reviews.exists():
        raise RawDataError(f"{folder}: neither {reviews.name} nor {ratings.name} exists")
    chunks = []
    if ratings.exists():
        chunks.append({"path": str(ratings), "kind": "inter", "names": CSV_NAMES})
    if reviews.exists():
        chunks.append({"path": str(reviews), "kind": "review" if ratings.exists() else "both", "names": JSON_NAMES})
    return chunks


def read_chunk(chunk: dict, bad: BadRows, limits: ReadLimits = LIMITS) -> Iterator[pd.DataFrame]:
    path = Path(chunk["path"])
    if path.suffix == ".csv":
        for df in read_delimited(path, bad, tuple(CSV_COLUMNS), column_names=CSV_COLUMNS, limits=limits):
            yield pd.DataFrame({"user": df["reviewerID"], "item": df["asin"], "ts": df["unix_ts"], "event": "rate",
                                "rating": df["rating"], "summary": None, "text": None, "_line": df["_line"],
                                "is_inter": True, "is_review": False})
        return
    for lines, objs in read_json_lines(path, bad, REVIEW_FIELDS, limits=limits):
        yield pd.DataFrame({
            "user": [o["reviewerID"] for o in objs], "item": [o["asin"] for o in objs],
            "ts": [o["unixReviewTime"] for o in objs], "event": "rate", "rating": [o["overall"] for o in objs],
            "summary": [clean_text(o.get("summary")) for o in objs],
            "text": [clean_text(o.get("reviewText")) for o in objs], "_line": lines,
            "is_inter": chunk["kind"] == "both", "is_review": True})


def read_metadata(path: Path, bad: BadRows | None = None) -> pd.DataFrame:
    seen: set[str] = set()
    rows = []
    for _, objs in read_json_lines(path, bad or BadRows("error"), ("asin",)):
        for m in objs:
            asin = normalise_id(m["asin"])
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


def catalogue(raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
    """Item metadata (item, title, brand, categories, description); empty for reviews-only categories."""
    meta = _folder(raw, category) / f"meta_{category}.json.gz"
    if not meta.exists():
        return pd.DataFrame(columns=["item", "title", "brand", "categories", "description"])
    return read_metadata(meta, bad)
