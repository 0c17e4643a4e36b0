"""`prefmine data prepare`: raw files -> canonical dataset directory.

The directory holds interactions.parquet (with the leave-one-out `split` column), items.parquet,
reviews.parquet and manifest.json (counts, schema version, data hash, key fingerprint). It is written to a
temporary sibling and renamed into place, so a failed run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from prefmine.data import amazon, movielens
from prefmine.data.amazon import RawDataError
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.split import leave_one_out

SCHEMA_VERSION = 1
SOURCES = ("amazon2018", "movielens")
DATA_DIR_ENV = "PREFMINE_DATA_DIR"
SOURCE_SUBDIR = {"amazon2018": "amazon2018", "movielens": "movielens"}


def resolve_raw(source: str, raw: str | os.PathLike | None) -> Path:
    """`--raw` if given, else `$PREFMINE_DATA_DIR/<source>`; a clear error when neither exists."""
    if raw:
        path = Path(raw)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV]) / SOURCE_SUBDIR[source]
    else:
        raise RawDataError(f"no raw data: pass --raw DIR or set {DATA_DIR_ENV}, or run `prefmine data download`")
    if not path.is_dir():
        raise RawDataError(f"raw data folder {path} does not exist")
    return path


def _hash_frame(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def prepare(source: str, raw: str | os.PathLike | None, out: str | os.PathLike, category: str | None = None,
            pseudonymiser: Pseudonymiser | None = None) -> dict:
    """Prepare a canonical dataset at `out` and return its manifest."""
    if source not in SOURCES:
        raise RawDataError(f"--source must be one of {SOURCES}, got {source!r}")
    t0 = time.time()
    raw_path = resolve_raw(source, raw)
    if source == "amazon2018":
        if not category:
            raise RawDataError("--category is required for --source amazon2018 (e.g. Magazine_Subscriptions)")
        tables = amazon.load(raw_path, category)
    else:
        category = category or "ml-latest-small"
        tables = movielens.load(raw_path)

    pseudo = pseudonymiser or Pseudonymiser()
    inter = tables["interactions"].reset_index(drop=True)
    inter["user"] = pseudo.many(inter["user"].astype(str))
    inter["split"] = leave_one_out(inter)
    inter = inter[["user", "item", "ts", "event", "rating", "split"]]
    reviews = tables["reviews"].reset_index(drop=True)
    reviews["user"] = pseudo.many(reviews["user"].astype(str))
    items = tables["items"][["item", "title", "brand", "categories", "description", "text"]]

    split_counts = inter["split"].value_counts().to_dict()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "category": category,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {"interactions": len(inter), "users": int(inter["user"].nunique()),
                   "items": len(items), "reviews": len(reviews),
                   "evaluated_users": int(split_counts.get("test", 0)),
                   "split": {k: int(v) for k, v in split_counts.items()}},
        "data_hash": _hash_frame(inter[["user", "item", "ts", "rating"]])[:16],
        "pseudonymisation": {"method": "hmac-sha256", "key_fingerprint": pseudo.fingerprint},
        "seconds": round(time.time() - t0, 2),
    }
    write_dataset(Path(out), {"interactions": inter, "items": items, "reviews": reviews}, manifest)
    return manifest


def write_dataset(out: Path, tables: dict[str, pd.DataFrame], manifest: dict) -> None:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
