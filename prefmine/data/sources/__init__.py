"""Raw data sources and their one registry.

A source turns one publisher's raw files into the standard rows `prefmine data prepare` checks, pseudonymises
and splits. Every source is a module of this package that satisfies `Source` (a module can implement a
protocol: its constants and functions are the members). `SOURCES` is the only list of them: the CLI's
`--source` choices, `prepare`, `demo` and the benches all read it, so a new source is one new module plus one
line below.

The standard rows (what `read_chunk` yields) are DataFrames with the columns `user`, `item`, `ts`, `event`,
`rating`, `summary`, `text`, `_line` (the line in the raw file, for error messages), `is_inter` (an
interaction row) and `is_review` (a review row); `prefmine.data.rows.check_rows` then checks them with the
source's `rules()`, the raw column names in the chunk's `names` naming the field of a bad row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from prefmine.data.rows import BadRows, RawDataError, RowRules, check_rows
from prefmine.data.sources import amazon, events, movielens, recbole, seqrec


@runtime_checkable
class Source(Protocol):
    """What every source provides. Reading is in two steps so the work can be spread: `plan` lists the chunks
    (a file, or a range of a Parquet file's row groups, as JSON-able dicts with at least `path`, `kind` and
    `names`), and `read_chunk` reads one chunk, possibly on another machine."""

    NAME: str  # the `--source` value, and the folder under $PREFMINE_DATA_DIR holding its raw files
    LAYOUT: str  # the raw files it reads under `--raw DIR`, in one line (shown by `--help`)
    DOWNLOADABLE: bool  # `prefmine data download` can fetch it from its publisher

    def rules(self) -> RowRules:
        """The declared rating range, timestamp check and duplicate policy of this source's rows."""

    def plan(self, raw: Path, category: str | None) -> list[dict]:
        """The chunks to read under `raw`; a RawDataError naming the missing file when the layout is wrong."""

    def read_chunk(self, chunk: dict, bad: BadRows) -> Iterator[pd.DataFrame]:
        """The standard rows of one chunk, in blocks; unreadable rows go to `bad` (kept or refused there)."""

    def catalogue(self, raw: Path, category: str | None, bad: BadRows) -> pd.DataFrame:
        """The item table (item, title, brand, categories, description, and any side columns); may be empty."""

    def dataset_name(self, raw: Path, category: str | None) -> str | None:
        """The data set's name recorded in the manifest (the category, or the one set found under `raw`)."""

    def time_kind(self, chunks: list[dict]) -> str:
        """"timestamps", or "order-only" when the files carry order but no time (then `ts` is a position)."""


SOURCES: dict[str, Source] = {m.NAME: m for m in (amazon, movielens, recbole, events, seqrec)}


def names() -> list[str]:
    """Every source's name, in registry order (the CLI's `--source` choices)."""
    return list(SOURCES)


def downloadable() -> list[str]:
    """The sources `prefmine data download` can fetch."""
    return [n for n, s in SOURCES.items() if s.DOWNLOADABLE]


def get_source(name: str) -> Source:
    """The source called `name`; a RawDataError naming the valid ones otherwise."""
    try:
        return SOURCES[name]
    except (KeyError, TypeError):
        raise RawDataError(f"--source must be one of {', '.join(SOURCES)}; got {name!r}") from None


def read_rows(name: str, raw: str | Path, category: str | None = None) -> pd.DataFrame:
    """Every interaction row of a raw source with raw ids, checked, in file order (single process; for small data,
    tools and tests): columns user, item, ts, event, rating."""
    source = get_source(name)
    rules, bad = source.rules(), BadRows("error")
    frames = []
    for chunk in source.plan(Path(raw), category):
        for df in source.read_chunk(chunk, bad):
            df = check_rows(df, chunk["path"], rules, bad, chunk["names"])
            frames.append(df[df["is_inter"].to_numpy()])
    return pd.concat(frames, ignore_index=True)[["user", "item", "ts", "event", "rating"]]
