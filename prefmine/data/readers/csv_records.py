"""Python's csv, record by record, for the delimited blocks Arrow's fast path cannot take (a line leaves a quote
open).

A multi-line record is accepted only when it closes within the size cap, strictly quoted (a closing quote is
followed by the delimiter or the line's end) and with the header's number of fields; otherwise its first line is
reported as an unbalanced quote and parsing resumes on the next line, so one stray quote loses one row. What stays
ambiguous is a stray quote whose field a later line closes cleanly (say a quoted text there starts with a quote, a
delimiter or a line break): no reader can tell that file from one with a multi-line text, and the rows between are
read as that text.
"""

from __future__ import annotations

import csv
from collections import deque
from pathlib import Path

from prefmine.data.readers.blocks import ReadLimits
from prefmine.data.rows import BadRows


class _NeedMore(Exception):
    """The csv parser asked for another line: a quoted field is still open."""


def _lines_then_more(lines: list[str]):
    yield from lines
    raise _NeedMore


class Records:
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
                wrong_count(self.bad, self.path, n, self.n_fields, len(value))
            else:
                out.append((n, value))

    def finish(self, out: list) -> None:
        while self.pending:
            work: deque = deque()
            self._reject_pending(work, "the quoted field is still open at the end of the file")
            self.feed(work, out)


def wrong_count(bad: BadRows, path: Path, line: int, expected: int, found: int) -> None:
    bad.bad(f"{path}:{line}", None, f"expected {expected} fields (the header's), found {found}", "wrong_field_count")
