"""The caps every reader works under (`ReadLimits`) and `line_blocks`, which reads a file (gzip by suffix) as
blocks of whole lines within them.

Files are read as blocks of whole lines; a line longer than `max_record_bytes` is reported and skipped without
being held in memory, and a file that decompresses past `max_decompressed_bytes` is reported and read no further
(a gzip bomb). A gzip stream that breaks mid-file is reported and the lines before the break are kept. Shared by
every line-based reader so one broken or hostile file costs the same bounded memory whatever its format.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefmine.data.rows import BadRows

GZIP_PIECE = 64 << 10  # gzip is read in small pieces so a break loses at most this much before it
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


@dataclass(frozen=True)
class ReadLimits:
    """Caps that keep one broken or hostile file from exhausting memory or time."""

    max_record_bytes: int = 1 << 20  # one record (a line, or a quoted multi-line CSV record)
    max_decompressed_bytes: int = 64 << 30  # one file, after gzip
    block_bytes: int = 1 << 20  # how much is parsed at a time


LIMITS = ReadLimits()



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
