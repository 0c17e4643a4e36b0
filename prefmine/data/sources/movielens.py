"""MovieLens latest-small (Harper & Konstan, 2015) as a prefmine source: ratings, movies (title, genres), tags.

Every rating is an interaction (event `rate`, declared range 0.5-5); a movie's text is its title, genres and the
tags users gave it; each tag is also kept as a short review, rated with its author's rating of the movie when
there is one (filled in when users are split, where a user's ratings and tags meet).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from prefmine.data.clean import clean_text
from prefmine.data.privacy import normalise_ids
from prefmine.data.readers.blocks import LIMITS, ReadLimits
from prefmine.data.readers.delimited import read_delimited
from prefmine.data.rows import BadRows, RawDataError, RowRules

RATING_NAMES = {"user": "userId", "item": "movieId", "ts": "timestamp", "rating": "rating"}
TAG_NAMES = {"user": "userId", "item": "movieId", "ts": "timestamp", "summary": "tag"}
NAME = "movielens"
LAYOUT = "<raw>/ml-latest-small/: ratings.csv, movies.csv, tags.csv"
DOWNLOADABLE = True


def rules() -> RowRules:
    return RowRules(rating_range=(0.5, 5.0), duplicates="keep")


def _folder(raw: Path) -> Path:
    folder = Path(raw) / "ml-latest-small"
    for name in ("ratings.csv", "movies.csv"):
        if not (folder / name).exists():
            raise RawDataError(f"missing {folder / name} (expected <raw>/ml-latest-small/)")
    return folder


def dataset_name(raw: Path, category: str | None) -> str:
    return category or "ml-latest-small"


def time_kind(chunks: list[dict]) -> str:
    return "timestamps"


def plan(raw: Path, category: str | None) -> list[dict]:
    folder = _folder(raw)
    chunks = [{"path": str(folder / "ratings.csv"), "kind": "inter", "names": RATING_NAMES}]
    if (folder / "tags.csv").exists():
        chunks.append({"path": str(folder / "tags.csv"), "kind": "review", "names": TAG_NAMES})
    return chunks


def read_chunk(chunk: dict, bad: BadRows, limits: ReadLimits = LIMITS) -> Iterator[pd.DataFrame]:
    path = Path(chunk["path"])
    if path.name == "ratings.csv":
        for df in read_delimited(path, bad, ("userId", "movieId", "rating", "timestamp"), limits=limits):
            yield pd.DataFrame({"user": df["userId"], "item": df["movieId"], "ts": df["timestamp"], "event": "rate",
                                "rating": df["rating"], "summary": None, "text": None, "_line": df["_line"],
                                "is_inter": True, "is_review": False})
        return
    for df in read_delimited(path, bad, ("userId", "movieId", "tag", "timestamp"), limits=limits):
        tag = df["tag"].map(clean_text)
        yield pd.DataFrame({"user": df["userId"], "item": df["movieId"], "ts": df["timestamp"], "event": "rate",
                            "rating": float("nan"), "summary": tag, "text": tag, "_line": df["_line"],
                            "is_inter": False, "is_review": True})


def catalogue(raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
    folder = _folder(raw)
    movies = pd.concat(list(read_delimited(folder / "movies.csv", bad, ("movieId", "title", "genres"))))
    tags_path = folder / "tags.csv"
    tags = pd.concat(list(read_delimited(tags_path, bad, ("movieId", "tag")))) if tags_path.exists() else \
        pd.DataFrame(columns=["movieId", "tag"])
    tags["tag"] = tags["tag"].map(clean_text)
    tags["movieId"] = normalise_ids(tags["movieId"].fillna(""))
    tag_text = tags.groupby("movieId")["tag"].apply(lambda s: ", ".join(dict.fromkeys(t for t in s if t)))
    genres = movies["genres"].fillna("").map(lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])
    return pd.DataFrame({"item": normalise_ids(movies["movieId"].fillna("")), "title": movies["title"].map(clean_text).to_numpy(),
                         "brand": "", "categories": genres.to_numpy(),
                         "description": pd.Series(normalise_ids(movies["movieId"].fillna(""))).map(tag_text)
                         .fillna("").to_numpy()})
