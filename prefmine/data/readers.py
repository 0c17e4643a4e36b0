"""Streaming readers for the raw file formats: delimited text (CSV/TSV, optionally gzip), JSON lines (gzip or
plain) and Parquet (by row-group range). Each yields pandas batches of the file's own columns plus `_line`, the
record's line in the file (1-based, header included; Parquet: the row number), so problems can be named exactly.

They turn file-level dirt into `BadRows` reports: an empty file, a gzip stream that ends mid-file (rows before the
break are kept), bytes that are not UTF-8 (the row is reported by line and field). Missing required columns always
raise. Text columns are read as bytes by Arrow and validated in bulk; only a batch that fails validation is
walked row by row to find the culprit, so clean files stay fast.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prefmine.data.rows import BadRows, RawDataError

BLOCK_BYTES = 1 << 20
PARQUET_BATCH = 262_144


def _decode_column(arr: pa.ChunkedArray, name: str, lines: np.ndarray, path: Path, bad: BadRows,
                   drop: np.ndarray) -> pd.Series:
    """Binary column -> str Series; rows whose bytes are not UTF-8 are reported and marked in `drop`."""
    try:
        return arr.cast(pa.string()).to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        values = arr.to_pylist()
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError as e:
                bad.bad(f"{path}:{lines[i]}", name, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
                drop[i] = True
                out.append(None)
        return pd.Series(out, dtype=object)


def read_delimited(path: Path, bad: BadRows, required: tuple[str, ...], optional: tuple[str, ...] = (),
                   delimiter: str = ",", column_names: list[str] | None = None,
                   header_map=None, quoting: bool = True) -> Iterator[pd.DataFrame]:
    """Batches of a delimited text file. Every column is read as bytes, then decoded and checked.

    `column_names` is for header-less files; `header_map` rewrites header names (RecBole's `name:type`);
    `quoting=False` reads quote characters as text (RecBole's atomic files have no quoting).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no header, no rows)", "empty_file")
        return
    read_opts = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=column_names, use_threads=False)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=quoting,
                                    quote_char='"' if quoting else False)
    try:
        if column_names is None:
            header = _header(path, delimiter)
            names = [header_map(h) if header_map else h for h in header]
            read_opts = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names, skip_rows=1,
                                          use_threads=False)
        else:
            names = list(column_names)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        bad.bad(str(path), None, f"cannot read the header ({e})", "truncated_file")
        return
    missing = [c for c in required if c not in names]
    if missing:
        raise RawDataError(f"{path}:1: missing column(s) {missing}; the file has {names} "
                           f"(required: {list(required)})")
    wanted = [c for c in names if c in required or c in optional]
    convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in names}, include_columns=wanted,
                                   strings_can_be_null=True, quoted_strings_can_be_null=False)
    first_line = 1 if column_names is not None else 2
    rows_seen = 0
    try:
        # gzip is decoded by Python so that a truncated file yields its rows up to the break (Arrow's own
        # decompressor reads ahead and fails before the first batch); one thread: parallelism is per task.
        source = gzip.open(path, "rb") if path.suffix == ".gz" else str(path)
        reader = pacsv.open_csv(source, read_options=read_opts, parse_options=parse_opts, convert_options=convert)
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
        if "Empty CSV file" in str(e):
            bad.bad(str(path), None, "empty file (no rows)", "empty_file")
        else:
            _stream_problem(bad, f"{path}:{first_line}", e)
        return
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
            _stream_problem(bad, f"{path}:{first_line + rows_seen}", e)
            break
        table = pa.Table.from_batches([batch])
        lines = first_line + rows_seen + np.arange(table.num_rows, dtype=np.int64)
        rows_seen += table.num_rows
        drop = np.zeros(table.num_rows, dtype=bool)
        df = pd.DataFrame({c: _decode_column(table.column(c), c, lines, path, bad, drop) for c in wanted})
        df["_line"] = lines
        yield df[~drop] if drop.any() else df
    if rows_seen == 0:
        bad.bad(str(path), None, "empty file (header only, no rows)", "empty_file")


def _stream_problem(bad: BadRows, where: str, e: Exception) -> None:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if any(s in text.lower() for s in ("gzip", "compress", "eof", "truncat", "zlib")):
        bad.bad(where, None, f"compressed stream ends or breaks here; the file is truncated ({text})",
                "truncated_file")
    else:
        bad.bad(where, None, f"malformed record near here ({text})", "malformed_record")


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _header(path: Path, delimiter: str) -> list[str]:
    with _open_text(path) as f:
        line = f.readline()
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise RawDataError(f"{path}:1: header is not valid UTF-8") from e
    if not text.strip():
        raise RawDataError(f"{path}:1: empty header line")
    return [h.strip().strip('"') for h in text.split(delimiter)]


def read_json_lines(path: Path, bad: BadRows, required: tuple[str, ...], batch_rows: int = 50_000
                    ) -> Iterator[tuple[list[int], list[dict]]]:
    """Batches of (line numbers, parsed objects) from a JSON-lines file (gzip by suffix)."""
    path = Path(path)
    if path.stat().st_size == 0:
        bad.bad(str(path), None, "empty file (no rows)", "empty_file")
        return
    lines: list[int] = []
    objs: list[dict] = []
    seen = 0
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad.bad(f"{path}:{lineno}", None, f"bytes that are not valid UTF-8 at byte {e.start}", "not_utf8")
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    bad.bad(f"{path}:{lineno}", None, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json")
                    continue
                if not isinstance(obj, dict):
                    bad.bad(f"{path}:{lineno}", None, "a JSON line must be an object", "invalid_json")
                    continue
                absent = [k for k in required if k not in obj]
                if absent:
                    bad.bad(f"{path}:{lineno}", absent[0], "missing field", f"missing_{absent[0]}")
                    continue
                lines.append(lineno)
                objs.append(obj)
                seen += 1
                if len(objs) >= batch_rows:
                    yield lines, objs
                    lines, objs = [], []
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        bad.bad(f"{path}:{lineno + 1}", None, f"gzip stream ends or breaks here; the file is truncated ({e})",
                "truncated_file")
    if objs:
        yield lines, objs
    if seen == 0 and not bad.counts.get("truncated_file"):
        bad.bad(str(path), None, "empty file (no valid rows)", "empty_file")


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
