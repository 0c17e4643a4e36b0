"""Streaming readers for the raw file formats: delimited text (CSV/TSV, optionally gzip), JSON lines (gzip or
plain) and Parquet (by row-group range). Each yields pandas batches of the file's own columns plus `_line`, the
record's first line in the file (1-based, header included; Parquet: the row number), so problems can be named
exactly.

A bad record costs that record only: every good record before and after it is kept. Files are read as blocks of
whole lines (`ReadLimits`); a line longer than `max_record_bytes` is reported and skipped without being held in
memory, and a file that decompresses past `max_decompressed_bytes` is reported and read no further (a gzip bomb).
Delimited text takes a fast path per block: when no line of the block leaves a quote open, Arrow parses the block
with one record per line (a row with the wrong number of fields is reported by its line and skipped). A block with a
quoted field spanning lines goes through Python's csv record by record: a multi-line record is accepted only when
it closes within the size cap, strictly quoted (a closing quote is followed by the delimiter or the line's end)
and with the header's number of fields; otherwise its first line is reported as an unbalanced quote and parsing
resumes on the next line, so one stray quote loses one row. What stays ambiguous is a stray quote whose field a later
line closes cleanly (say a quoted text there starts with a quote, a delimiter or a line break): no reader can tell
that file from one with a multi-line text, and the rows between are read as that text.

File-level dirt is reported through `BadRows` too: an empty file, a gzip stream that ends or breaks mid-file (rows
before the break are kept), bytes that are not UTF-8 (by line and field), a repeated header line. Missing required
columns, or a required column named twice in the header, always raise. Text columns are read as bytes and validated
in bulk; only a batch that fails validation is walked row by row to find the culprit, so clean files stay fast.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prefmine.data.rows import BadRows, RawDataError

PARQUET_BATCH = 262_144
GZIP_PIECE = 64 << 10  # gzip is read in small pieces so a break loses at most this much before it
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


@dataclass(frozen=True)
class ReadLimits:
    """Caps that keep one broken or hostile file from exhausting memory or time."""

    max_record_bytes: int = 1 << 20  # one record (a line, or a quoted multi-line CSV record)
    max_decompressed_bytes: int = 64 << 30  # one file, after gzip
    block_bytes: int = 1 << 20  # how much is parsed at a time


LIMITS = ReadLimits()


# --------------------------------------------------------------------------------------------- lines and blocks

def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _too_long(bad: BadRows, path: Path, line: int, limits: ReadLimits) -> None:
    bad.bad(f"{path}:{line}", None, f"record longer than {limits.max_record_bytes} bytes (max_record_bytes); skipped",
            "record_too_large")


def _split_long(block: bytes, line: int, path: Path, bad: BadRows, limits: ReadLimits
                ) -> Iterator[tuple[int, bytes]]:
    """`block` (whole lines) without its lines over the cap, as runs of (first line number, bytes)."""
    cap = limits.max_record_bytes
    if len(block) <= cap + 1:
        yield line, block
        return
    a = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(a == 10)
    starts = np.r_[0, ends[:-1] + 1]
    long = np.flatnonzero(ends - starts > cap)
    prev = 0
    for k in long:
        if k > prev:
            yield line + prev, block[starts[prev]:starts[k]]
        _too_long(bad, path, line + int(k), limits)
        prev = int(k) + 1
    if prev < len(starts):
        yield line + prev, block[starts[prev]:]


def line_blocks(path: Path, bad: BadRows, limits: ReadLimits = LIMITS) -> Iterator[tuple[int, bytes]]:
    """The file (gzip by suffix) as blocks of whole lines, each with the number of its first line; every block ends
    with a newline (one is added to an unterminated last line). Over-long lines, a broken or truncated gzip stream
    and a file past the decompressed cap are reported to `bad`; reading stops at a broken stream."""
    path = Path(path)
    cap = limits.max_record_bytes
    piece = GZIP_PIECE if path.suffix == ".gz" else limits.block_bytes
    line, total, skipping = 1, 0, False
    buf = b""
    with _open(path) as f:
        while True:
            parts, size, problem, eof = [], 0, None, False
            while size < limits.block_bytes:
                try:
                    data = f.read(piece)
                except _STREAM_ERRORS as e:
                    problem = e
                    break
                if not data:
                    eof = True
                    break
                parts.append(data)
                size += len(data)
            total += size
            data = b"".join(parts)
            if total > limits.max_decompressed_bytes:
                data = data[:max(0, len(data) - (total - limits.max_decompressed_bytes))]
            if skipping and data:
                nl = data.find(b"\n")
                if nl < 0:
                    data = b""
                else:
                    data, skipping, line = data[nl + 1:], False, line + 1
            buf = buf + data if buf else data
            cut = buf.rfind(b"\n")
            if cut >= 0:
                block, buf = buf[:cut + 1], buf[cut + 1:]
                yield from _split_long(block, line, path, bad, limits)
                line += block.count(b"\n")
            if len(buf) > cap:
                _too_long(bad, path, line, limits)
                buf, skipping = b"", True
            if total > limits.max_decompressed_bytes:
                bad.bad(f"{path}:{line}", None, f"the file decompresses to more than {limits.max_decompressed_bytes} "
                        "bytes (max_decompressed_bytes); read no further", "file_too_large")
                return
            if problem is not None:
                _stream_problem(bad, f"{path}:{line}", problem)
                return
            if eof:
                break
    if buf and not skipping:
        yield line, buf + b"\n"


def _stream_problem(bad: BadRows, where: str, e: Exception) -> None:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    bad.bad(where, None, f"gzip stream ends or breaks here; the file is truncated or corrupt ({text})",
            "truncated_file")


# ------------------------------------------------------------------------------------------------ delimited text

class _NeedMore(Exception):
    """The csv parser asked for another line: a quoted field is still open."""


def _lines_then_more(lines: list[str]):
    yield from lines
    raise _NeedMore


class _Records:
    """Python csv, record by record, for blocks the fast path cannot take (a quote left open at a line's end)."""

    def __init__(self, path: Path, bad: BadRows, n_fields: int, delimiter: str, quoting: bool, limits: ReadLimits):
        self.path, self.bad, self.n_fields, self.limits = path, bad, n_fields, limits
        self.fmt = {"delimiter": delimiter, "quotechar": '"', "doublequote": True,
                    "quoting": csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE}
        self.pending: list[tuple[int, str]] = []  # the lines of a record whose quoted field is still open
        self.pending_bytes = 0
        self.pending_quotes = 0  # quote characters after the record's first line
        if csv.field_size_limit() < limits.max_record_bytes:
            csv.field_size_limit(limits.max_record_bytes)

    def _parse(self, lines: list[str], strict: bool):
        """('ok', fields) | ('open', None) | ('bad', reason text)."""
        reader = csv.reader(_lines_then_more(lines), strict=strict, **self.fmt)
        try:
            fields = next(reader)
        except _NeedMore:
            return "open", None
        except csv.Error as e:
            return "bad", str(e)
        if reader.line_num != len(lines):
            return "bad", "the quoted field closes before the record's last line"
        return "ok", fields

    def _reject_pending(self, work: deque, why: str) -> None:
        first = self.pending[0][0]
        self.bad.bad(f"{self.path}:{first}", None, f"unbalanced quote: {why}; the line is skipped and reading "
                     "resumes on the next one", "unbalanced_quote")
        work.extendleft(reversed(self.pending[1:]))
        self.pending, self.pending_bytes, self.pending_quotes = [], 0, 0

    def feed(self, lines, out: list) -> None:
        """Parse `(line number, text)` pairs; good records go to `out` as (line, fields)."""
        work = deque(lines)
        cap = self.limits.max_record_bytes
        while work:
            n, text = work.popleft()
            if self.pending:
                self.pending.append((n, text))
                self.pending_bytes += len(text)
                self.pending_quotes += text.count('"')
                if self.pending_bytes > cap:
                    self._reject_pending(work, f"the quoted field does not close within {cap} bytes")
                    continue
                if self.pending_quotes % 2 == 0:
                    continue  # every quote since the record's first line doubled: the field is still open
                status, value = self._parse([t for _, t in self.pending], strict=True)
                if status == "open":
                    continue
                if status == "ok" and len(value) == self.n_fields:
                    out.append((self.pending[0][0], value))
                    self.pending, self.pending_bytes, self.pending_quotes = [], 0, 0
                    continue
                self._reject_pending(work, "the quoted field opened on this line does not close into a record"
                                     + (f" with {self.n_fields} fields" if status == "ok" else f" ({value})"))
                continue
            body = text.rstrip("\r\n") if '"' not in text and "\r" not in text[:-2] else None
            if body is not None:  # no quote, no stray CR: the fields are what lies between delimiters
                status, value = "ok", (body.split(self.fmt["delimiter"]) if body else [])
            else:
                status, value = self._parse([text], strict=False)
            if status == "open":
                self.pending, self.pending_bytes, self.pending_quotes = [(n, text)], len(text), 0
            elif status == "bad":
                self.bad.bad(f"{self.path}:{n}", None, f"malformed record ({value})", "malformed_record")
            elif not value:
                continue  # an empty line
            elif len(value) != self.n_fields:
                _wrong_count(self.bad, self.path, n, self.n_fields, len(value))
            else:
                out.append((n, value))

    def finish(self, out: list) -> None:
        while self.pending:
            work: deque = deque()
            self._reject_pending(work, "the quoted field is still open at the end of the file")
            self.feed(work, out)


def _wrong_count(bad: BadRows, path: Path, line: int, expected: int, found: int) -> None:
    bad.bad(f"{path}:{line}", None, f"expected {expected} fields (the header's), found {found}", "wrong_field_count")


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
        _wrong_count(bad, path, int(lines[number - 1]), expected, actual)
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
    records = _Records(path, bad, len(names), delimiter, quoting, limits)
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


# --------------------------------------------------------------------------------------------------- JSON lines

def _keep_constant(name: str) -> str:
    return name  # NaN / Infinity stay text, so the row checks call them "not a number" instead of a missing value


def read_json_lines(path: Path, bad: BadRows, required: tuple[str, ...], batch_rows: int = 50_000,
                    limits: ReadLimits = LIMITS) -> Iterator[tuple[list[int], list[dict]]]:
    """Batches of (line numbers, parsed objects) from a JSON-lines file (gzip by suffix)."""
    path = Path(path)
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no rows)", "empty_file")
        return
    lines: list[int] = []
    objs: list[dict] = []
    seen, bad_before = 0, sum(bad.counts.values())
    decoder = json.JSONDecoder(parse_constant=_keep_constant)
    for first, block in line_blocks(path, bad, limits):
        for lineno, raw in enumerate(block.split(b"\n")[:-1], first):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.bad(where, None, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
                continue
            try:
                obj = decoder.decode(text)
            except json.JSONDecodeError as e:
                bad.bad(where, None, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json")
                continue
            except RecursionError:
                bad.bad(where, None, "invalid JSON (nested too deeply)", "invalid_json")
                continue
            if not isinstance(obj, dict):
                bad.bad(where, None, "a JSON line must be an object", "invalid_json")
                continue
            absent = [k for k in required if k not in obj]
            if absent:
                bad.bad(where, absent[0], "missing field", f"missing_{absent[0]}")
                continue
            lines.append(lineno)
            objs.append(obj)
            seen += 1
            if len(objs) >= batch_rows:
                yield lines, objs
                lines, objs = [], []
    if objs:
        yield lines, objs
    if seen == 0 and sum(bad.counts.values()) == bad_before:
        bad.bad(str(path), None, "empty file (no valid rows)", "empty_file")


# ------------------------------------------------------------------------------------------------------ Parquet

def parquet_row_groups(path: Path) -> int:
    return pq.ParquetFile(path).num_row_groups


def read_parquet(path: Path, bad: BadRows, required: tuple[str, ...], optional: tuple[str, ...] = (),
                 row_groups: tuple[int, int] | None = None) -> Iterator[pd.DataFrame]:
    """Batches of a Parquet file (only row groups [start, stop) when given); `_line` is the 1-based row."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        if path.stat().st_size == 0:
            bad.bad(str(path), None, "empty file", "empty_file")
            return
        raise RawDataError(f"{path}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise RawDataError(f"{path}: missing column(s) {missing}; the file has {names} (required: {list(required)})")
    twice = [c for c in dict.fromkeys(names) if names.count(c) > 1 and (c in required or c in optional)]
    if twice:
        raise RawDataError(f"{path}: column {twice[0]!r} appears {names.count(twice[0])} times; which one holds "
                           "the data is ambiguous")
    if pf.metadata.num_rows == 0:
        bad.bad(str(path), None, "empty file (no rows)", "empty_file")
        return
    start, stop = row_groups or (0, pf.num_row_groups)
    offset = sum(pf.metadata.row_group(i).num_rows for i in range(start))
    cols = [c for c in names if c in required or c in optional]
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=list(range(start, stop)), columns=cols):
        lines = offset + 1 + np.arange(batch.num_rows, dtype=np.int64)
        offset += batch.num_rows
        df = batch.to_pandas()
        df["_line"] = lines
        yield df
