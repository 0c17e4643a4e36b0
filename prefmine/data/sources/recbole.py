"""RecBole atomic files (`.inter`, `.item`, `.user`) as a prefmine source: the interchange format of recommender
research (recbole.io, "Atomic Files").

Each file is tab-separated with a `name:type` header, types token, token_seq, float, float_seq. `.inter` needs
`user_id:token` and `item_id:token`; `rating:float` and `timestamp:float` are optional (without a timestamp the
file order is the time order, and the event is `click`; with a rating it is `rate`). Review text, when the file
carries it, is read from `review:token_seq`/`review_text`/`text` and `summary`/`review_title`. `.item` gives item
text from whatever of title/movie_title/name, brand, categories/genre/category, description it has. `.user` is
checked (header, ids) but its attributes (age, gender, ...) are personal data prefmine does not need and are
not read into any table.

`--raw` is the folder holding `<name>.inter` (or `<name>/<name>.inter`); `--category NAME` picks one when the
folder holds several.
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

EXPECTED_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
TEXT_FIELDS = {"text": ("review", "review_text", "text"), "summary": ("summary", "review_title")}
ITEM_FIELDS = {"title": ("title", "movie_title", "name"), "brand": ("brand",),
               "categories": ("categories", "genre", "category"), "description": ("description",)}
NAME = "recbole"
LAYOUT = "<raw>/[<name>/]<name>.inter, .item, .user (RecBole atomic files)"
DOWNLOADABLE = False


def rules() -> RowRules:
    return RowRules(rating_range=(0.0, 5.0), duplicates="keep")


def header(path: Path) -> dict[str, str]:
    """`{field: type}` of an atomic file's header; a clear error for a malformed or mistyped one."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise RawDataError(f"{path}:1: empty file or empty header (expected `field:type` columns)")
    try:
        cols = first.decode("utf-8-sig").rstrip("\r\n").split("\t")
    except UnicodeDecodeError as e:
        raise RawDataError(f"{path}:1: header is not valid UTF-8") from e
    out = {}
    for c in cols:
        name, sep, typ = c.strip().partition(":")
        if not sep or typ not in ("token", "token_seq", "float", "float_seq"):
            raise RawDataError(f"{path}:1: column {c!r} is not `name:type` with type token, token_seq, float or "
                               "float_seq (RecBole atomic file header)")
        out[name] = typ
    for name, typ in EXPECTED_TYPES.items():
        if name in out and out[name] != typ:
            raise RawDataError(f"{path}:1: field {name!r} has type {out[name]!r}, expected {typ!r}")
    return out


def _find(raw: Path, name: str | None, suffix: str) -> Path | None:
    raw = Path(raw)
    if name:
        for p in (raw / f"{name}{suffix}", raw / name / f"{name}{suffix}"):
            if p.is_file():
                return p
        return None
    found = sorted(raw.glob(f"*{suffix}")) + sorted(raw.glob(f"*/*{suffix}"))
    return found[0] if len(found) == 1 else None


def dataset_name(raw: Path, category: str | None) -> str:
    if category:
        return category
    found = sorted(Path(raw).glob("*.inter")) + sorted(Path(raw).glob("*/*.inter"))
    if len(found) != 1:
        raise RawDataError(f"{raw}: expected one <name>.inter (found {[p.name for p in found]}); "
                           "pass --category NAME to choose")
    return found[0].stem


def plan(raw: Path, category: str | None) -> list[dict]:
    name = dataset_name(raw, category)
    inter = _find(raw, name, ".inter")
    if inter is None:
        raise RawDataError(f"{raw}: no {name}.inter (expected <raw>/<name>.inter or <raw>/<name>/<name>.inter)")
    fields = header(inter)
    for req in ("user_id", "item_id"):
        if req not in fields:
            raise RawDataError(f"{inter}:1: missing column '{req}:token'; the header has {list(fields)}")
    user = _find(Path(inter).parent, name, ".user")
    if user is not None:
        ufields = header(user)
        if "user_id" not in ufields:
            raise RawDataError(f"{user}:1: missing column 'user_id:token'; the header has {list(ufields)}")
    names = {"user": "user_id", "item": "item_id", "ts": "timestamp", "rating": "rating"}
    return [{"path": str(inter), "kind": "both", "names": names, "fields": list(fields)}]


def _strip_type(col: str) -> str:
    return col.split(":", 1)[0]


def read_chunk(chunk: dict, bad: BadRows, limits: ReadLimits = LIMITS) -> Iterator[pd.DataFrame]:
    path = Path(chunk["path"])
    fields = chunk["fields"]
    text_cols = {k: next((f for f in cands if f in fields), None) for k, cands in TEXT_FIELDS.items()}
    optional = tuple(f for f in ("rating", "timestamp", *text_cols.values()) if f)
    for df in read_delimited(path, bad, ("user_id", "item_id"), optional, delimiter="\t", header_map=_strip_type,
                             quoting=False, limits=limits):
        has_rating = "rating" in df
        text = df[text_cols["text"]].map(clean_text) if text_cols["text"] else None
        summary = df[text_cols["summary"]].map(clean_text) if text_cols["summary"] else None
        is_review = pd.Series(False, index=df.index)
        for col in (text, summary):
            if col is not None:
                is_review |= col.fillna("").str.len() > 0
        yield pd.DataFrame({
            "user": df["user_id"], "item": df["item_id"],
            "ts": df["timestamp"] if "timestamp" in df else df["_line"],
            "event": "rate" if has_rating else "click",
            "rating": df["rating"] if has_rating else float("nan"),
            "summary": summary, "text": text,
            "_line": df["_line"], "is_inter": True, "is_review": is_review.to_numpy()})


def uses_file_order(chunks: list[dict]) -> bool:
    return any("timestamp" not in c["fields"] for c in chunks)


def time_kind(chunks: list[dict]) -> str:
    """Order-only when an `.inter` file has no timestamp column: its file order is then the time order."""
    return "order-only" if uses_file_order(chunks) else "timestamps"


def catalogue(raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
    name = dataset_name(raw, category)
    path = _find(raw, name, ".item")
    cols = ["item", "title", "brand", "categories", "description"]
    if path is None:
        return pd.DataFrame(columns=cols)
    fields = header(path)
    if "item_id" not in fields:
        raise RawDataError(f"{path}:1: missing column 'item_id:token'; the header has {list(fields)}")
    pick = {k: next((f for f in cands if f in fields), None) for k, cands in ITEM_FIELDS.items()}
    optional = tuple(f for f in pick.values() if f)
    frames = list(read_delimited(path, bad, ("item_id",), optional, delimiter="\t", header_map=_strip_type,
                          quoting=False))
    df = pd.concat(frames) if frames else pd.DataFrame(columns=["item_id", *optional])

    def col(key):
        return df[pick[key]].map(clean_text).to_numpy() if pick[key] else [""] * len(df)

    cats = df[pick["categories"]].fillna("").map(lambda s: [c for c in str(s).split() if c]).to_numpy() \
        if pick["categories"] else [[] for _ in range(len(df))]
    return pd.DataFrame({"item": normalise_ids(df["item_id"].fillna("")), "title": col("title"), "brand": col("brand"),
                         "categories": list(cats), "description": col("description")})
