"""Streaming readers for the raw file formats: delimited text (CSV/TSV, optionally gzip), JSON lines (gzip or
plain) and Parquet (by row-group range). Each yields pandas batches of the file's own columns plus `_line`, the
record's first line in the file (1-based, header included; Parquet: the row number), so problems can be named
exactly.

A bad record costs that record only: every good record before and after it is kept. File-level dirt is reported
through `BadRows` too: an empty file, a gzip stream that ends or breaks mid-file (rows before the break are kept),
bytes that are not UTF-8 (by line and field), a repeated header line. Missing required columns, or a required
column named twice in the header, always raise.

One module per job: `blocks` (the caps, `ReadLimits`, and reading a file as blocks of whole lines under them),
`delimited` (CSV/TSV through Arrow, block by block), `csv_records` (Python's csv record by record, for blocks with
a quoted field spanning lines), `json_lines` and `parquet`.
"""
