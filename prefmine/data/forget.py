"""`prefmine data forget`: erase people from a prepared dataset, the serving feedback log, and mark bundles.

First each person's pseudonym goes onto the tombstone list (prefmine/data/tombstones.py), before anything is
deleted: a running server stops answering for them within seconds, and `prepare` and training jobs drop their
rows from any copy of the data, even if this erasure stops half-way. People known only from feedback (no row in
the dataset) are tombstoned and erased from the feedback log all the same.

The raw id is pseudonymised with the dataset's key (its fingerprint must match the manifest), which names the
one user bucket holding all of that person's rows. That bucket's parts of interactions, reviews and item review
snippets are rewritten without them (write aside, then rename), item texts built from reviews are rebuilt, and
the manifest records the erasure (when, how many rows; never the id) with the new data hash. Rows in the feedback
log (a SQLite path or a PostgreSQL DSN) are deleted and the log vacuumed. Every bundle given that was trained on
this dataset before the erasure gets `erasures` in its manifest: it still contains the person's data and must be
retrained.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefmine.data.prepare import (
    INTER_SCHEMA,
    REVIEW_SCHEMA,
    SNIPPET_SCHEMA,
    _snippets,
    bucket_hash,
    bucket_of,
    combine_hashes,
    review_descriptions,
)
from prefmine.data.privacy import DEMO_FINGERPRINT, Pseudonymiser, load_key
from prefmine.data.rows import RawDataError
from prefmine.data.tombstones import open_list
from prefmine.data.tombstones import resolve as resolve_tombstones


def _rewrite(path: Path, frame: pd.DataFrame, schema: pa.Schema) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False), tmp)
    tmp.replace(path)


def _bundles(paths) -> list[Path]:
    out = []
    for p in map(Path, paths or ()):
        if (p / "manifest.json").is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if (c / "manifest.json").is_file()))
        else:
            raise FileNotFoundError(f"--bundle {p}: neither a bundle nor a folder of bundles")
    return out


def forget(data: str | Path, raw_user: str | list[str], feedback: str | Path | None = None, bundles=(),
           pseudonymiser: Pseudonymiser | None = None, tombstones: str | Path | None = None) -> dict:
    """Erase `raw_user` (one raw id or a list); returns a report with the rows removed per table, the bundles
    marked and the tombstone file written (one person: that report; several: ``{"people": [...]}``).

    `tombstones`: the tombstone file (default: $PREFMINE_TOMBSTONES, else beside a SQLite `feedback`); with none
    at all the erasure still runs, and the report says ``"tombstones": null``."""
    raw_users = [raw_user] if isinstance(raw_user, str) else list(raw_user)
    if not raw_users:
        raise RawDataError("user: no raw user id given")
    pseudo = _pseudonymiser(Path(data), pseudonymiser)
    where = resolve_tombstones(tombstones, feedback)
    if where is not None:  # before any deletion: serving stops answering for them even if a step below fails
        open_list(where).add(pseudo(u) for u in raw_users)
    reports = [_forget_one(data, u, feedback, bundles, pseudo) for u in raw_users]
    for r in reports:
        r["tombstones"] = str(where) if where else None
    return reports[0] if isinstance(raw_user, str) else {"people": reports,
                                                         "tombstones": str(where) if where else None}


def _pseudonymiser(data: Path, pseudonymiser: Pseudonymiser | None) -> Pseudonymiser:
    """The pseudonymiser of the dataset's key (an error when the configured key is another)."""
    manifest_path = data / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{data} is not a prepared dataset (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema_version", 1) < 2:
        raise RawDataError(f"{data}: prepared with an older prefmine (schema {manifest.get('schema_version')}); "
                           "prepare it again to be able to erase users")
    expected = manifest["pseudonymisation"]["key_fingerprint"]
    pseudo = pseudonymiser or Pseudonymiser(load_key(allow_demo=expected == DEMO_FINGERPRINT))
    if pseudo.fingerprint != expected:
        raise RawDataError(f"PREFMINE_PSEUDONYM_KEY: fingerprint {pseudo.fingerprint} differs from the key {data} "
                           f"was prepared with ({expected}); erasure needs the same key")
    return pseudo


def _forget_one(data: str | Path, raw_user: str, feedback, bundles, pseudonymiser: Pseudonymiser) -> dict:
    from prefmine.bundle import update_manifest

    data = Path(data)
    manifest_path = data / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{data} is not a prepared dataset (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    user = pseudonymiser(raw_user)
    b = bucket_of(user, manifest["buckets"])
    removed = {}
    parts = {name: data / f"{name}.parquet" / f"part-{b:05d}.parquet"
             for name in ("interactions", "reviews", "item_review_snippets")}
    frames = {name: pd.read_parquet(p) if p.is_file() else None for name, p in parts.items()}
    orig_inter, reviews = frames["interactions"], frames["reviews"]
    for name, schema in (("interactions", INTER_SCHEMA), ("reviews", REVIEW_SCHEMA)):
        df = frames[name]
        mine = df["user"] == user if df is not None else pd.Series([], dtype=bool)
        removed[name] = int(mine.sum())
        if removed[name]:
            frames[name] = df[~mine]
            _rewrite(parts[name], frames[name], schema)
    if removed["reviews"] and reviews is not None:
        snippets = _snippets(frames["reviews"])
        _rewrite(parts["item_review_snippets"], snippets, SNIPPET_SCHEMA)
        _rebuild_review_texts(data)
    if feedback:
        from prefmine.feedback import open_feedback_store

        log = open_feedback_store(feedback, create=False)
        removed["feedback"] = log.forget(user)
        log.close()

    erasure = {"id": uuid.uuid4().hex[:12], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "rows": removed, "data_hash_before": manifest["data_hash"]}
    if removed["interactions"]:
        manifest["bucket_hashes"][str(b)] = bucket_hash(frames["interactions"])
        manifest["data_hash"] = combine_hashes(manifest["bucket_hashes"])
        c = manifest["counts"]
        c["interactions"] -= removed["interactions"]
        c["users"] -= 1
        c["reviews"] -= removed["reviews"]
        if (orig_inter["user"] == user).any():
            for split, n in orig_inter.loc[orig_inter["user"] == user, "split"].value_counts().items():
                c["split"][split] -= int(n)
            c["evaluated_users"] = c["split"].get("test", 0)
    manifest.setdefault("erasures", []).append(erasure)
    tmp = manifest_path.with_name(f".manifest.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(manifest_path)

    marked = []
    for bundle in _bundles(bundles):
        bm = json.loads((bundle / "manifest.json").read_text())
        ds = bm.get("dataset", {})
        if ds.get("dataset_id") == manifest.get("dataset_id") and removed["interactions"] + removed["reviews"]:
            update_manifest(bundle, erasures=[*bm.get("erasures", []), {
                "id": erasure["id"], "at": erasure["at"], "dataset_id": manifest["dataset_id"],
                "note": "trained on data that included an erased person; retrain to remove their influence"}])
            marked.append(str(bundle))
    return {"pseudonym_bucket": b, "rows_removed": removed, "erasure_id": erasure["id"], "bundles_marked": marked}


def _rebuild_review_texts(data: Path) -> None:
    """Rebuild the descriptions of items whose text comes from reviews, from the current snippets."""
    from prefmine.data.clean import item_text

    items = pd.read_parquet(data / "items.parquet")
    by_item = review_descriptions(pd.read_parquet(data / "item_review_snippets.parquet"))
    mask = items["text_source"] == "reviews"
    if not mask.any():
        return
    items.loc[mask, "description"] = items.loc[mask, "item"].map(by_item).fillna("")
    items["text"] = [item_text(t, b, list(c), d) for t, b, c, d in
                     zip(items["title"], items["brand"], items["categories"], items["description"])]
    tmp = data / f".items.parquet.tmp-{os.getpid()}"
    items.to_parquet(tmp, index=False)
    tmp.replace(data / "items.parquet")
