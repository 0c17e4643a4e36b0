"""Loader for MovieLens latest-small (Harper & Konstan, 2015): ratings, movies (title, genres) and tags.

Every rating is an interaction (event `rate`); a movie's text is its title, genres and the tags users gave it;
each tag is kept as a short review, rated with its author's rating of the movie when there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.amazon import RawDataError
from prefmine.data.clean import clean_text, item_text


def load(raw: Path) -> dict[str, pd.DataFrame]:
    folder = Path(raw) / "ml-latest-small"
    for name in ("ratings.csv", "movies.csv"):
        if not (folder / name).exists():
            raise RawDataError(f"missing {folder / name} (expected <raw>/ml-latest-small/)")
    ratings = pd.read_csv(folder / "ratings.csv", dtype={"userId": str, "movieId": str})
    inter = pd.DataFrame({"user": ratings["userId"], "item": ratings["movieId"],
                          "ts": ratings["timestamp"].astype("int64"), "rating": ratings["rating"].astype("float32")})
    inter["event"] = "rate"
    movies = pd.read_csv(folder / "movies.csv", dtype={"movieId": str})
    tags_path = folder / "tags.csv"
    tags = pd.read_csv(tags_path, dtype={"userId": str, "movieId": str}) if tags_path.exists() else pd.DataFrame(
        columns=["userId", "movieId", "tag", "timestamp"])
    tags["tag"] = tags["tag"].map(clean_text)
    tag_text = tags.groupby("movieId")["tag"].apply(lambda s: ", ".join(dict.fromkeys(t for t in s if t)))
    genres = movies["genres"].fillna("").map(lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])
    items = pd.DataFrame({"item": movies["movieId"], "title": movies["title"].map(clean_text), "brand": "",
                          "categories": genres, "description": movies["movieId"].map(tag_text).fillna("")})
    # Rated movies missing from movies.csv still get a row.
    extra = np.setdiff1d(pd.unique(inter["item"]), items["item"].to_numpy())
    if len(extra):
        items = pd.concat([items, pd.DataFrame({"item": extra, "title": "", "brand": "",
                                                "categories": [[] for _ in extra], "description": ""})])
    items = items[items["item"].isin(set(inter["item"]))].reset_index(drop=True)
    items["text"] = [item_text(t, b, c, d) for t, b, c, d in
                     zip(items["title"], items["brand"], items["categories"], items["description"])]
    # A tag is a short review; its rating is the tagger's own rating of that movie, when they rated it.
    rated = inter.drop_duplicates(["user", "item"], keep="last").set_index(["user", "item"])["rating"]
    tag_rating = pd.Series(list(zip(tags["userId"], tags["movieId"]))).map(rated.to_dict()).astype("float32")
    reviews = pd.DataFrame({"user": tags["userId"], "item": tags["movieId"], "ts": tags["timestamp"].astype("int64"),
                            "rating": tag_rating.to_numpy(), "summary": tags["tag"], "text": tags["tag"]})
    return {"interactions": inter, "items": items, "reviews": reviews}
