"""Sequential-recommendation benchmark files (the S3-Rec layout: Amazon Beauty, Sports, Yelp, ...) as a source.

`--raw DIR --category NAME` reads `DIR/NAME/` (or `DIR` itself when it holds `NAME.txt`):

- `NAME.txt`: one line per user, `user_id item_1 ... item_n`, whitespace-separated non-negative integers, in time
  order. The files carry order only, no timestamps, so each user's events get a synthetic monotone `ts` (their
  position, 1..n) and the manifest records `time: order-only`; the canonical table's time order is the file order.
  Events are `click`, without rating.
- `NAME_item2attributes.json` (optional): `{"<item_id>": [attribute_id, ...]}`; the ids become the items' side
  column `attributes` (strings), kept even where no name for them is known.
- `NAME_item_*.tsv` (optional, at most one): tab-separated with a header and an `item_id` column. A
  `title`/`name` column gives the title; `attributes`/`categories` holds attribute names joined with `|`, kept as
  `attribute_names` and read into the item text, so an item without a title is described by its attribute names.
  Every other column (`asin`, `business_id`, ...) is kept as a side column of the items table.

Item ids stay the file's ids, as strings (`"007"` is item `"7"`). Bad input is reported by file and line (or JSON
key) under `--on-bad-rows error` and skipped one record at a time under `skip`: a sequence line that is empty, has
a token that is not a non-negative integer, no item, or repeats an earlier line's user id; a TSV row with the wrong
number of fields, a bad or repeated `item_id`; an attribute entry whose key or ids are not integers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.clean import clean_text
from prefmine.data.readers.blocks import line_blocks
from prefmine.data.rows import BadRows, RawDataError, RowRules

NAME = "seqrec"
LAYOUT = "<raw>/<NAME>/<NAME>.txt, optional <NAME>_item2attributes.json and <NAME>_item_*.tsv"
DOWNLOADABLE = False
BATCH_LINES = 50_000
NAMES = {"user": "user_id", "item": "item_id", "ts": "position"}
TITLE_COLUMNS = ("title", "name")
ATTRIBUTE_NAME_COLUMNS = ("attributes", "categories")
RESERVED = ("item", "title", "brand", "categories", "description", "text", "text_source", "attributes",
            "attribute_names")


def rules() -> RowRules:
    """Order-only data: no timestamp window to check; repeated items (Yelp) are real events, kept."""
    return RowRules(rating_range=(0.0, 5.0), check_ts=False, duplicates="keep")


def _is_id(token: str) -> bool:
    return token.isascii() and token.isdigit()


def dataset_name(raw: Path, category: str | None) -> str:
    """The set's name: `--category`, else the only `<d>/<d>.txt` (or `<d>.txt`) under `raw`."""
    if category:
        return category
    raw = Path(raw)
    found = sorted({p.stem for p in raw.glob("*/*.txt") if p.stem == p.parent.name}
                   | {p.stem for p in raw.glob("*.txt")})
    if len(found) != 1:
        raise RawDataError(f"{raw}: expected one <NAME>/<NAME>.txt (found {found}); pass --category NAME to choose")
    return found[0]


def folder(raw: Path, category: str | None) -> tuple[Path, str]:
    """`(folder holding NAME.txt, NAME)`; a clear error when the sequence file is missing."""
    name = dataset_name(raw, category)
    for d in (Path(raw) / name, Path(raw)):
        if (d / f"{name}.txt").is_file():
            return d, name
    raise RawDataError(f"{raw}: no {name}.txt (expected <raw>/{name}/{name}.txt)")


def time_kind(chunks: list[dict]) -> str:
    """Always order-only: the files carry each user's sequence, not its times."""
    return "order-only"


def plan(raw: Path, category: str | None) -> list[dict]:
    d, name = folder(raw, category)
    return [{"path": str(d / f"{name}.txt"), "kind": "inter", "names": NAMES}]


def _frame(users: list, items: list, pos: list, lines: list) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({"user": users, "item": items, "ts": np.asarray(pos, dtype=np.int64), "event": "click",
                         "rating": np.full(n, np.nan), "summary": None, "text": None,
                         "_line": np.asarray(lines, dtype=np.int64), "is_inter": True, "is_review": False})


def read_chunk(chunk: dict, bad: BadRows) -> Iterator[pd.DataFrame]:
    """Rows of a sequence file, one per (user, position); a bad line is reported and skipped whole, since
    dropping one token would silently change the order of what remains."""
    path = Path(chunk["path"])
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no sequences)", "empty_file")
        return
    seen: dict[str, int] = {}
    users: list[str] = []
    items: list[str] = []
    pos: list[int] = []
    lines: list[int] = []
    for first, block in line_blocks(path, bad):  # the readers' caps on record and decompressed size apply here too
        for lineno, raw_line in enumerate(block.split(b"\n")[:-1], first):
            where = f"{path}:{lineno}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.bad(where, None, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
                continue
            tokens = line.split()
            if not tokens:
                bad.bad(where, None, "empty line (expected `user_id item_1 ... item_n`)", "empty_line")
                continue
            wrong = next((i for i, t in enumerate(tokens) if not _is_id(t)), None)
            if wrong is not None:
                field = "user_id" if wrong == 0 else "item_id"
                bad.bad(where, field, f"token {wrong + 1} is not a non-negative integer (value "
                        f"{tokens[wrong][:60]!r})", "not_an_integer")
                continue
            if len(tokens) < 2:
                bad.bad(where, "item_id", f"user {tokens[0]} has no items", "no_items")
                continue
            user = str(int(tokens[0]))
            if user in seen:
                bad.bad(where, "user_id", f"user id {user} already has a sequence on line {seen[user]}",
                        "duplicate_user")
                continue
            seen[user] = lineno
            n = len(tokens) - 1
            users.extend([user] * n)
            items.extend(str(int(t)) for t in tokens[1:])
            pos.extend(range(1, n + 1))
            lines.extend([lineno] * n)
            if len(users) >= BATCH_LINES:
                yield _frame(users, items, pos, lines)
                users, items, pos, lines = [], [], [], []
    if users:
        yield _frame(users, items, pos, lines)
    elif not seen:
        bad.bad(str(path), None, "no valid sequence line", "empty_file")


def _attributes(path: Path, bad: BadRows) -> dict[str, list[str]]:
    """`item -> attribute ids` from an item2attributes JSON; a bad entry is reported by its key and skipped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad.bad(str(path), None, f"not a valid UTF-8 JSON object ({e})", "bad_json")
        return {}
    if not isinstance(data, dict):
        bad.bad(str(path), None, f"expected a JSON object of item_id -> [attribute ids], got {type(data).__name__}",
                "bad_json")
        return {}
    out: dict[str, list[str]] = {}
    for key, ids in data.items():
        where = f"{path}: key {str(key)[:60]!r}"
        if not _is_id(str(key)):
            bad.bad(where, "item_id", "key is not a non-negative integer item id", "bad_attribute")
            continue
        if not isinstance(ids, list) or not all(
                (isinstance(a, int) and not isinstance(a, bool) and a >= 0) or (isinstance(a, str) and _is_id(a))
                for a in ids):
            bad.bad(where, "attributes", f"expected a list of non-negative integer attribute ids, got "
                    f"{str(ids)[:60]!r}", "bad_attribute")
            continue
        out[str(int(key))] = [str(int(a)) for a in ids]
    return out


def _tsv(path: Path, bad: BadRows) -> pd.DataFrame:
    """Rows of an item TSV (header with `item_id`), every field a string; a broken row is reported and skipped."""
    with open(path, "rb") as f:
        data = f.read()
    text_lines = data.split(b"\n")
    if text_lines and text_lines[-1] == b"":
        text_lines.pop()
    if not text_lines:
        bad.bad(str(path), None, "empty file (no header, no rows)", "empty_file")
        return pd.DataFrame(columns=["item_id"])
    try:
        header = text_lines[0].decode("utf-8-sig").rstrip("\r").split("\t")
    except UnicodeDecodeError as e:
        raise RawDataError(f"{path}:1: header is not valid UTF-8") from e
    if "item_id" not in header:
        raise RawDataError(f"{path}:1: missing column 'item_id'; the header has {header}")
    if len(set(header)) != len(header):
        raise RawDataError(f"{path}:1: repeated column names in the header {header}")
    key = header.index("item_id")
    rows: list[list[str]] = []
    seen: dict[str, int] = {}
    for lineno, raw_line in enumerate(text_lines[1:], start=2):
        where = f"{path}:{lineno}"
        try:
            fields = raw_line.decode("utf-8").rstrip("\r").split("\t")
        except UnicodeDecodeError as e:
            bad.bad(where, None, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
            continue
        if len(fields) != len(header):
            bad.bad(where, None, f"{len(fields)} tab-separated fields, the header has {len(header)}", "bad_tsv_row")
            continue
        item = fields[key].strip()
        if not _is_id(item):
            bad.bad(where, "item_id", f"not a non-negative integer (value {item[:60]!r})", "bad_tsv_row")
            continue
        item = str(int(item))
        if item in seen:
            bad.bad(where, "item_id", f"item {item} already described on line {seen[item]}", "duplicate_item")
            continue
        seen[item] = lineno
        fields[key] = item
        rows.append(fields)
    return pd.DataFrame(rows, columns=header, dtype=object)


def item_tsv(d: Path, name: str) -> Path | None:
    """The set's item TSV (`NAME_item_text.tsv`, `NAME_item_asin.tsv`, ...), if any; more than one is an error."""
    found = sorted(d.glob(f"{name}_item_*.tsv"))
    if len(found) > 1:
        raise RawDataError(f"{d}: several item TSVs {[p.name for p in found]}; keep one (item_id plus columns)")
    return found[0] if found else None


def _names(value: str) -> list[str]:
    return [t for t in (clean_text(s) for s in str(value).split("|")) if t]


def catalogue(raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
    """Items described by the set's optional files: title, attribute names (in the description, so they reach the
    item text) and side columns (`attributes` ids, `attribute_names`, the TSV's other columns)."""
    d, name = folder(raw, category)
    attr_path = d / f"{name}_item2attributes.json"
    attrs = _attributes(attr_path, bad) if attr_path.is_file() else {}
    tsv_path = item_tsv(d, name)
    tsv = _tsv(tsv_path, bad) if tsv_path else pd.DataFrame(columns=["item_id"])
    items = list(dict.fromkeys([*tsv["item_id"].tolist(), *sorted(attrs, key=int)]))
    by_item = tsv.set_index("item_id").reindex(items)
    title_col = next((c for c in TITLE_COLUMNS if c in by_item.columns), None)
    names_col = next((c for c in ATTRIBUTE_NAME_COLUMNS if c in by_item.columns), None)
    titles = [clean_text(str(t).replace("\\n", " ").replace("\\t", " ")) if isinstance(t, str) else ""
              for t in (by_item[title_col] if title_col else [None] * len(items))]
    names = [_names(v) if isinstance(v, str) else [] for v in (by_item[names_col] if names_col else
                                                              [None] * len(items))]
    out = pd.DataFrame({"item": items, "title": titles, "brand": "", "categories": [[] for _ in items],
                        "description": [", ".join(n) for n in names],
                        "attributes": [attrs.get(i, []) for i in items], "attribute_names": names})
    for col in by_item.columns:
        if col in (title_col, names_col):
            continue
        side = col if col not in RESERVED else f"tsv_{col}"
        out[side] = by_item[col].fillna("").map(clean_text).to_numpy()
    return out
