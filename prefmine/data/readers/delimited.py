"""`read_delimited`: batches of a delimited text file (CSV/TSV, optionally gzip), one bad record costing one row.

Delimited text takes a fast path per block: when no line of the block leaves a quote open, Arrow parses the block
with one record per line (a row with the wrong number of fields is reported by its line and skipped). A block with
a quoted field spanning lines goes through `csv_records` instead. Text columns are read as bytes and validated in
bulk; only a batch that fails validation is walked row by row to find the culprit, so clean files stay fast. The
header decides the columns: missing required columns, or a required column named twice, raise.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from prefmine.data.readers.blocks import LIMITS, ReadLimits, line_blocks
from prefmine.data.readers.csv_records import Records, wrong_count
from prefmine.data.rows import BadRows, RawDataError


def _fast_block(block: bytes, line: int, path: Path, bad: BadRows, names: list[str], wanted: list[str],
                delimiter: str, quoting: bool) -> tuple[pa.Table, np.ndarray] | None:
    """Arrow parse of a block with one record per line, or None when the block needs the record-by-record path."""
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(a == 10)
    starts = np.r_[0, ends[:-1] + 1]
    cr = np.flatnonzero(a == 13)
    if cr.size and (a[cr + 1] != 10).any():  # a bare CR: Arrow would split the line there
        return None
    if quoting:
        q = np.flatnonzero(a == 34)
        if q.size and (np.diff(np.searchsorted(q, np.r_[starts, len(a)])) % 2).any():
            return None  # some line leaves a quote open (a multi-line field, or a stray quote)
    length = ends - starts
    empty = (length == 0) | ((length == 1) & (a[starts] == 13))
    invalid: list[tuple[int, int, int]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(block),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                             newlines_in_values=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in names}, include_columns=wanted,
                                                 strings_can_be_null=True, null_values=[""],
                                                 quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError):
        return None
    lines = line + np.flatnonzero(~empty)
    keep = np.ones(len(lines), dtype=bool)
    for number, _, _ in invalid:
        if number is None or not 1 <= number <= len(lines):
            return None
        keep[number - 1] = False
    if table.num_rows != int(keep.sum()):
        return None
    for number, expected, actual in invalid:
        wrong_count(bad, path, int(lines[number - 1]), expected, actual)
    return table, lines[keep]


def _records_table(records: list[tuple[int, list[str]]], names: list[str], wanted: list[str]
                   ) -> tuple[pa.Table, np.ndarray]:
    """Records from Python's csv as the fast path's table: binary columns, empty fields null."""
    cols = {}
    for c in wanted:
        i = names.index(c)
        cols[c] = pa.array([f[i].encode("utf-8", "surrogateescape") if f[i] else None for _, f in records],
                           type=pa.binary())
    return pa.table(cols), np.array([n for n, _ in records], dtype=np.int64)


def _decode_column(arr, name: str, lines: np.ndarray, path: Path, bad: BadRows, drop: np.ndarray) -> pd.Series:
    """Binary column -> str Series; rows whose bytes are not UTF-8 are reported and marked in `drop`."""
    try:
        return arr.cast(pa.string()).to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        out = []
        for i, v in enumerate(arr.to_pylist()):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError as e:
                if not drop[i]:
                    bad.bad(f"{path}:{lines[i]}", name, f"bytes that are not valid UTF-8 at byte {e.start}",
                            "not_utf8")
                drop[i] = True
                out.append(None)
        return pd.Series(out, dtype=object)


def _header(first: bytes, path: Path, delimiter: str, quoting: bool) -> list[str]:
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RawDataError(f"{path}:1: header is not valid UTF-8") from e
    if not text.strip():
        raise RawDataError(f"{path}:1: empty header line")
    row = next(csv.reader([text], delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE))
    return [h.strip() for h in row]


def read_delimited(path: Path, bad: BadRows, required: tuple[str, ...], optional: tuple[str, ...] = (),
                   delimiter: str = ",", column_names: list[str] | None = None,
                   header_map=None, quoting: bool = True, limits: ReadLimits = LIMITS) -> Iterator[pd.DataFrame]:
    """Batches of a delimited text file. Every column is read as bytes, then decoded and checked.

    `column_names` is for header-less files; `header_map` rewrites header names (RecBole's `name:type`);
    `quoting=False` reads quote characters as text (RecBole's atomic files have no quoting).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no header, no rows)", "empty_file")
        return
    blocks = line_blocks(path, bad, limits)
    raw_header: list[str] | None = None
    if column_names is None:
        try:
            first_line, block = next(blocks)
        except StopIteration:
            if not bad.counts.get("truncated_file"):
                bad.bad(str(path), None, "empty file (no header, no rows)", "empty_file")
            return
        if first_line != 1:
            raise RawDataError(f"{path}:1: the header line is longer than {limits.max_record_bytes} bytes")
        cut = block.index(b"\n") + 1
        raw_header = _header(block[:cut], path, delimiter, quoting)
        names = [header_map(h) if header_map else h for h in raw_header]
        blocks = _chain((first_line + 1, block[cut:]), blocks)
    else:
        names = list(column_names)
    missing = [c for c in required if c not in names]
    if missing:
        raise RawDataError(f"{path}:1: missing column(s) {missing}; the file has {names} "
                           f"(required: {list(required)})")
    wanted = [c for c in dict.fromkeys(names) if c in required or c in optional]
    twice = [c for c in wanted if names.count(c) > 1]
    if twice:
        raise RawDataError(f"{path}:1: column {twice[0]!r} appears {names.count(twice[0])} times in the header; "
                           "which one holds the data is ambiguous")
    names = [n if n in wanted or names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    records = Records(path, bad, len(names), delimiter, quoting, limits)
    bom = column_names is not None
    rows_seen, bad_before = 0, sum(bad.counts.values())
    for first_line, block in blocks:
        if bom:
            block, bom = (block[3:] if block.startswith(b"\xef\xbb\xbf") else block), False
        if not block:
            continue
        fast = None if records.pending else _fast_block(block, first_line, path, bad, names, wanted, delimiter,
                                                         quoting)
        if fast is None:
            found: list = []
            text = block.decode("utf-8", "surrogateescape").split("\n")[:-1]
            records.feed(((first_line + i, t + "\n") for i, t in enumerate(text)), found)
            if not found:
                continue
            fast = _records_table(found, names, wanted)
        rows_seen += len(fast[1])
        df = _frame(fast[0], fast[1], wanted, raw_header, names, path, bad)
        if len(df):
            yield df
    found = []
    records.finish(found)
    if found:
        rows_seen += len(found)
        df = _frame(*_records_table(found, names, wanted), wanted, raw_header, names, path, bad)
        if len(df):
            yield df
    if rows_seen == 0 and sum(bad.counts.values()) == bad_before:
        bad.bad(str(path), None, "empty file (header only, no rows)", "empty_file")


def _chain(first, rest):
    yield first
    yield from rest


def _frame(table: pa.Table, lines: np.ndarray, wanted: list[str], raw_header: list[str] | None, names: list[str],
           path: Path, bad: BadRows) -> pd.DataFrame:
    drop = np.zeros(table.num_rows, dtype=bool)
    df = pd.DataFrame({c: _decode_column(table.column(c), c, lines, path, bad, drop) for c in wanted})
    if raw_header is not None and len(df):
        again = np.ones(len(df), dtype=bool)
        for c in wanted:
            again &= (df[c] == raw_header[names.index(c)]).to_numpy()
        again &= ~drop
        for i in np.flatnonzero(again):
            bad.bad(f"{path}:{lines[i]}", None, "the header line again (files joined together?)", "repeated_header")
        drop |= again
    df["_line"] = lines
    return df[~drop].reset_index(drop=True) if drop.any() else df
