"""The live catalogue: item writes (upserts and retirements) made while serving, validated row by row and logged
durably in the feedback store (a `catalog_changes` table beside `feedback`, same SQLite file or PostgreSQL
database), so that every serving replica can poll one change log by increasing id and the next bundle can fold
the changes into its dataset's items.

`rows` checks incoming rows (every bad row named, every good row kept), the stores' `append_catalog` /
`read_catalog_since` write and page the log (`prefmine.feedback.sqlite`, `prefmine.feedback.postgres`),
`state` folds a log into the current catalogue, and `load` reads a JSONL or CSV file for the bulk path
(`prefmine catalog load`).
"""

from __future__ import annotations

from prefmine.catalog.rows import CatalogChange, RowError, changes_digest, validate_rows
from prefmine.catalog.state import CatalogState

__all__ = ["CatalogChange", "CatalogState", "RowError", "changes_digest", "validate_rows"]
