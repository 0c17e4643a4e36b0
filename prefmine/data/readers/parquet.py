"""`read_parquet`: batches of a Parquet file, optionally only a range of row groups so one file can be split
across workers; `_line` is the 1-based row number.

Parquet carries its own schema, so only the file-level checks apply: unreadable, empty, missing or repeated
required columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefmine.data.rows import BadRows, RawDataError

PARQUET_BATCH = 262_144


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
