"""`prefmine data prepare`: raw files -> canonical dataset directory, in two parallel stages.

1. **Stage rows** (one task per chunk: a file, or a range of Parquet row groups): read and check rows, pseudonymise
   user ids (keyed HMAC), scrub personal data from review text, and write each row into one of B user buckets
   (by pseudonym), as Parquet under the temporary output's `_stage/`.
2. **Split users** (one task per bucket: all events of its users): order each user's events by time (ties by
   file order), find duplicate events, label the leave-one-out split, fill a review's missing rating from its
   author's rating, and write the bucket's part of `interactions.parquet/`, `reviews.parquet/` and the
   train-period review snippets that describe items without a catalogue text.

The stages are plain functions over JSON-able task dicts, run by a `runner`: in-process (`local_runner`, for
tests and small data) or Ray Data (`cluster.prepare_job.ray_data_runner`, what the CLI uses), which streams the
tasks over a cluster's CPUs; no stage holds more than one chunk or one bucket. Only the item catalogue and the
manifest are built in the driver. The whole directory is written aside and renamed into place, so a failed run
leaves nothing half-written and never replaces a good dataset.

Output: interactions.parquet/ (user, item, ts, event, rating, split), reviews.parquet/ (user, item, ts, rating,
summary, text), items.parquet, item_review_snippets.parquet/ and manifest.json (counts, bad rows skipped,
duplicates, scrubbed PII, the key's fingerprint, a data hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefmine.data.catalog_fold import fold_catalog, read_catalog_changes
from prefmine.data.clean import item_text
from prefmine.data.privacy import Pseudonymiser, load_key
from prefmine.data.rows import BadRows, RawDataError, RowRules, check_rows
from prefmine.data.scrub import scrub_text_counted
from prefmine.data.sources import get_source
from prefmine.data.split import leave_one_out
from prefmine.progress import Progress, format_duration, format_rate

SCHEMA_VERSION = 2
DATA_DIR_ENV = "PREFMINE_DATA_DIR"
ITEM_COLUMNS = ["item", "title", "brand", "categories", "description", "text", "text_source"]
ROWS_PER_BUCKET = 400_000
SNIPPET_CHARS = 500

STAGE_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("ts", pa.int64()), ("event", pa.string()),
                          ("rating", pa.float32()), ("summary", pa.string()), ("text", pa.string()),
                          ("is_inter", pa.bool_()), ("is_review", pa.bool_()), ("src", pa.int32()),
                          ("_line", pa.int64())])
INTER_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("ts", pa.int64()), ("event", pa.string()),
                          ("rating", pa.float32()), ("split", pa.string())])
REVIEW_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("ts", pa.int64()),
                           ("rating", pa.float32()), ("summary", pa.string()), ("text", pa.string()),
                           ("split", pa.string())])
SNIPPET_SCHEMA = pa.schema([("item", pa.string()), ("snippet", pa.string()), ("reviews", pa.int64())])

# A runner runs one stage's tasks and returns their results in task order, counting each finished task on the
# optional Progress (prefmine.progress) it is given.
Runner = Callable[..., list[dict]]


def local_runner(fn: Callable[[dict], dict], tasks: list[dict], stage: str,
                 progress: Progress | None = None) -> list[dict]:
    """Run a stage's tasks one after another in this process."""
    out = []
    for t in tasks:
        out.append(fn(t))
        if progress is not None:
            progress.update()
    return out


@dataclass
class PrepContext:
    """Everything a stage task needs; shipped to workers with the task function."""

    source: str
    work: str  # the temporary output directory
    key: bytes
    rules: RowRules
    on_bad_rows: str
    buckets: int
    paths: list[str] = field(default_factory=list)
    erased: frozenset = frozenset()  # tombstoned pseudonyms (prefmine/data/tombstones.py): their rows are dropped


def resolve_raw(source: str, raw: str | os.PathLike | None) -> Path:
    """`--raw` if given, else `$PREFMINE_DATA_DIR/<source>`; a clear error when neither exists."""
    if raw:
        path = Path(raw)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV]) / get_source(source).NAME
    else:
        raise RawDataError(f"no raw data: pass --raw DIR or set {DATA_DIR_ENV}, or run `prefmine data download`")
    if not path.is_dir():
        raise RawDataError(f"raw data folder {path} does not exist")
    return path


def bucket_of(pseudonym: str, buckets: int) -> int:
    return int(pseudonym[:8], 16) % buckets


def _estimate_rows(chunks: list[dict]) -> int:
    rows = 0
    for c in chunks:
        p = Path(c["path"])
        if p.name.endswith(".parquet"):
            md = pq.ParquetFile(p).metadata
            a, b = c.get("row_groups", [0, md.num_row_groups])
            rows += sum(md.row_group(i).num_rows for i in range(a, b))
        else:
            rows += p.stat().st_size // (25 if p.suffix == ".gz" else 60)
    return rows


# ----------------------------------------------------------------------------------------------- stage 1: rows

def stage_rows(task: dict, ctx: PrepContext) -> dict:
    """Read, check, pseudonymise and scrub one chunk; write its rows into the user buckets."""
    bad = BadRows(ctx.on_bad_rows)
    source = get_source(ctx.source)
    pseudo = Pseudonymiser(ctx.key)
    stage = Path(ctx.work) / "_stage"
    writers: dict[int, pq.ParquetWriter] = {}
    counts: Counter = Counter()
    scrubbed: Counter = Counter()
    try:
        for raw_df in source.read_chunk(task, bad):
            counts["read"] += len(raw_df)
            df = check_rows(raw_df, task["path"], ctx.rules, bad, task["names"])
            if df.empty:
                continue
            uniq, inverse = np.unique(df["user"].to_numpy().astype(str), return_inverse=True)
            names = np.array([pseudo(u) for u in uniq], dtype=object)
            if ctx.erased:  # erased people never come back from the raw files
                gone = np.fromiter((n in ctx.erased for n in names), dtype=bool, count=len(names))[inverse]
                if gone.any():
                    counts["tombstoned"] += int(gone.sum())
                    df, inverse = df[~gone].reset_index(drop=True), inverse[~gone]
                    if df.empty:
                        continue
            df["user"] = names[inverse]
            bucket = np.array([bucket_of(p, ctx.buckets) for p in names], dtype=np.int64)[inverse]
            for col in ("summary", "text"):
                values = df[col].to_numpy()
                has = df["is_review"].to_numpy() & pd.notna(values)
                if has.any():
                    out = values.copy()
                    for i in np.flatnonzero(has):
                        out[i], c = scrub_text_counted(str(values[i]))
                        scrubbed.update(c)
                    df[col] = out
                df.loc[~df["is_review"].to_numpy(), col] = None
            df["src"] = np.int32(task["index"])
            order = np.argsort(bucket, kind="stable")
            table = pa.Table.from_pandas(df.iloc[order][STAGE_SCHEMA.names], schema=STAGE_SCHEMA,
                                         preserve_index=False)
            sorted_b = bucket[order]
            bounds = np.flatnonzero(np.diff(sorted_b)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(sorted_b)]):
                b = int(sorted_b[lo])
                if b not in writers:
                    (stage / f"b{b:05d}").mkdir(parents=True, exist_ok=True)
                    writers[b] = pq.ParquetWriter(stage / f"b{b:05d}" / f"c{task['index']:06d}.parquet",
                                                  STAGE_SCHEMA)
                writers[b].write_table(table.slice(lo, hi - lo))
            counts["kept"] += len(df)
    except RawDataError as e:
        return {"index": task["index"], "error": str(e)}
    finally:
        for w in writers.values():
            w.close()
    return {"index": task["index"], "stats": json.dumps({"counts": counts, "bad": dict(bad.counts),
                                                         "examples": bad.examples, "scrubbed": scrubbed})}


# ------------------------------------------------------------------------------------------ stage 2: split users

def _duplicates(inter: pd.DataFrame, ctx: PrepContext, bad: BadRows) -> np.ndarray:
    """Mask of repeated (user, item, ts, event) rows after the first; reported unless the source keeps them."""
    dup = inter.duplicated(["user", "item", "ts", "event"], keep="first").to_numpy()
    if not dup.any() or ctx.rules.duplicates == "keep":
        return np.zeros(len(inter), dtype=bool)
    keys = ["user", "item", "ts", "event"]
    first = inter.drop_duplicates(keys, keep="first").set_index(keys)[["src", "_line"]]
    row = inter[dup].sort_values(["src", "_line"]).iloc[0]
    orig = first.loc[tuple(row[k] for k in keys)]
    bad.bad(f"{ctx.paths[int(row['src'])]}:{int(row['_line'])}", None,
            f"duplicate event: same user, item, timestamp and event as {ctx.paths[int(orig['src'])]}:"
            f"{int(orig['_line'])}", "duplicate_event", n=int(dup.sum()))
    return dup


def review_splits(reviews: pd.DataFrame, inter: pd.DataFrame) -> np.ndarray:
    """Each review's split: that of its own event row when the review is an interaction row, else that of the
    author's interaction with the item at the same time (train when there is none)."""
    own = pd.Series(inter["split"].to_numpy(), index=pd.MultiIndex.from_arrays([inter["src"], inter["_line"]]))
    split = own.reindex(pd.MultiIndex.from_arrays([reviews["src"], reviews["_line"]])).to_numpy(dtype=object)
    held = inter[inter["split"] != "train"].drop_duplicates(["user", "item", "ts"], keep="last")
    by_time = pd.Series(held["split"].to_numpy(),
                        index=pd.MultiIndex.from_arrays([held["user"], held["item"], held["ts"]]))
    other = ~reviews["is_inter"].to_numpy() | pd.isna(split)
    if other.any():
        r = reviews[other]
        split[other] = by_time.reindex(pd.MultiIndex.from_arrays([r["user"], r["item"], r["ts"]])).fillna(
            "train").to_numpy(dtype=object)
    return split


def _snippets(reviews: pd.DataFrame) -> pd.DataFrame:
    """Per item, the start of its train-period reviews (summary, else text; repeats once): text for items without
    metadata, built without any held-out review."""
    train = reviews[reviews["split"].to_numpy() == "train"]
    if train.empty:
        return pd.DataFrame({"item": [], "snippet": [], "reviews": []})
    phrase = train["summary"].fillna("").where(train["summary"].fillna("") != "", train["text"].fillna("").str[:200])
    phrase = phrase[phrase != ""]
    items = train.loc[phrase.index, "item"]
    grouped = phrase.groupby(items.to_numpy(), sort=True)
    return pd.DataFrame({"item": grouped.size().index.to_numpy(),
                         "snippet": grouped.apply(lambda s: " . ".join(dict.fromkeys(s))[:SNIPPET_CHARS]).to_numpy(),
                         "reviews": grouped.size().to_numpy()})


def bucket_hash(inter: pd.DataFrame) -> str:
    """Content hash of one bucket's interactions; the dataset's data hash combines these in bucket order."""
    return hashlib.sha256(pd.util.hash_pandas_object(inter[["user", "item", "ts", "rating"]], index=False)
                          .to_numpy().tobytes()).hexdigest()


def review_descriptions(snippets: pd.DataFrame) -> pd.Series:
    """Item -> description built from its review snippets (all buckets), for items without catalogue text."""
    if not len(snippets):
        return pd.Series(dtype=object)
    return snippets.groupby("item")["snippet"].apply(lambda s: " . ".join(s)[:SNIPPET_CHARS])


def split_bucket(task: dict, ctx: PrepContext) -> dict:
    """Leave-one-out split of one bucket's users; writes the bucket's parts of the canonical tables."""
    b = task["bucket"]
    bad = BadRows(ctx.on_bad_rows)
    work = Path(ctx.work)
    files = sorted((work / "_stage" / f"b{b:05d}").glob("*.parquet"))
    if not files:
        return {"bucket": b, "stats": json.dumps({"empty": True})}
    df = pa.concat_tables([pq.read_table(f, schema=STAGE_SCHEMA) for f in files]).to_pandas()
    df = df.sort_values(["user", "ts", "src", "_line"], kind="stable").reset_index(drop=True)
    inter = df[df["is_inter"].to_numpy()].reset_index(drop=True)
    try:
        dup = _duplicates(inter, ctx, bad)
    except RawDataError as e:
        return {"bucket": b, "error": str(e)}
    repeated = int(inter.duplicated(["user", "item", "ts", "event"]).sum())
    inter = inter[~dup].reset_index(drop=True)
    inter["split"] = leave_one_out(inter)
    reviews = df[df["is_review"].to_numpy()].reset_index(drop=True)
    if reviews["rating"].isna().any() and not inter.empty:
        rated = inter.dropna(subset=["rating"]).drop_duplicates(["user", "item"], keep="last")
        own = reviews[["user", "item"]].merge(rated[["user", "item", "rating"]], on=["user", "item"], how="left")
        reviews["rating"] = reviews["rating"].fillna(pd.Series(own["rating"].to_numpy(), index=reviews.index))
    reviews["split"] = review_splits(reviews, inter) if len(reviews) else np.array([], dtype=object)
    snippets = _snippets(reviews)
    for name, frame, schema in (("interactions", inter, INTER_SCHEMA), ("reviews", reviews, REVIEW_SCHEMA),
                                ("item_review_snippets", snippets, SNIPPET_SCHEMA)):
        (work / f"{name}.parquet").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False),
                       work / f"{name}.parquet" / f"part-{b:05d}.parquet")
    split_counts = inter["split"].value_counts().to_dict()
    digest = bucket_hash(inter)
    stats = {"interactions": len(inter), "users": int(inter["user"].nunique()), "reviews": len(reviews),
             "split": {k: int(v) for k, v in split_counts.items()}, "items": sorted(set(inter["item"])),
             "events": {k: int(v) for k, v in inter["event"].value_counts().items()},
             "repeated_events": repeated, "hash": digest, "bad": dict(bad.counts), "examples": bad.examples}
    return {"bucket": b, "stats": json.dumps(stats)}


# ----------------------------------------------------------------------------------------------- the driver

def item_table(catalogue: pd.DataFrame, interacted: list[str], snippets: pd.DataFrame) -> pd.DataFrame:
    """Items that were interacted with, in catalogue order then id order; text from the catalogue, else from the
    item's train-period reviews. Catalogue columns beyond the standard ones are kept as side columns."""
    cat = catalogue.drop_duplicates("item", keep="first")
    cat = cat[cat["item"].isin(set(interacted))]
    extra = sorted(set(interacted) - set(cat["item"]))
    items = pd.concat([cat, pd.DataFrame({"item": extra, "title": "", "brand": "", "categories": [[]] * len(extra),
                                          "description": ""})], ignore_index=True)
    items = items.fillna({"title": "", "brand": "", "description": ""})
    side = [c for c in cat.columns if c not in ITEM_COLUMNS]  # a source's own item columns (seqrec attributes)
    for c in side:
        if pd.api.types.is_numeric_dtype(cat[c]):  # numbers (content's publication time) keep NaN as unknown
            items[c] = pd.to_numeric(items[c], errors="coerce")
            continue
        as_list = any(isinstance(v, (list, np.ndarray)) for v in cat[c])
        items[c] = [v if not (v is None or (isinstance(v, float) and v != v)) else ([] if as_list else "")
                    for v in items[c]]
    items["categories"] = items["categories"].apply(lambda c: list(c) if isinstance(c, (list, np.ndarray)) else [])
    by_item = review_descriptions(snippets)
    no_text = (items["title"] == "") & (items["description"] == "")
    items["text_source"] = np.where(no_text, "reviews", "catalogue")
    items.loc[no_text, "description"] = items.loc[no_text, "item"].map(by_item).fillna("")
    items["text"] = [item_text(t, b, c, d) for t, b, c, d in
                     zip(items["title"], items["brand"], items["categories"], items["description"])]
    return items[ITEM_COLUMNS + side]


def _failed(results: list[dict], key: str) -> None:
    errors = sorted((r[key], r["error"]) for r in results if "error" in r)
    if errors:
        raise RawDataError(errors[0][1])


def prepare(source: str, raw: str | os.PathLike | None, out: str | os.PathLike, category: str | None = None,
            pseudonymiser: Pseudonymiser | None = None, on_bad_rows: str = "error",
            rating_range: tuple[float, float] | None = None, runner: Runner | None = None,
            buckets: int | None = None, engine: str = "local", tombstones: str | os.PathLike | None = None,
            progress: TextIO | None = None, catalog_feedback: str | None = None) -> dict:
    """Prepare a canonical dataset at `out` (a directory, or a URI: prefmine.storage, where every node can read
    it and `load_dataset` downloads it) and return its manifest.

    `progress`: a stream (the CLI passes stderr) for one progress line per stage, tasks done with rate and ETA,
    and a closing line per stage with its row rate; None writes nothing.

    `tombstones`: the list of erased pseudonyms (default $PREFMINE_TOMBSTONES); their rows are dropped and
    counted in the manifest's ``tombstoned`` (rows only, never who).

    `catalog_feedback`: a feedback store (SQLite path or PostgreSQL DSN) whose catalogue change log (WriteCatalog,
    `prefmine catalog load`) is folded into the items (`fold_catalog`), counted in the manifest's ``catalog``."""
    from prefmine.data.tombstones import default_location, open_list
    from prefmine.storage import is_uri, put_dir

    if is_uri(out):  # an object store: prepared in a local temp dir, then uploaded with its content index
        with tempfile.TemporaryDirectory(prefix="prefmine-prepare-") as tmp:
            manifest = prepare(source, raw, Path(tmp) / "dataset", category, pseudonymiser, on_bad_rows,
                               rating_range, runner, buckets, engine, tombstones, progress, catalog_feedback)
            put_dir(Path(tmp) / "dataset", out)
        return manifest
    module = get_source(source)  # an unknown name fails here, naming the valid ones
    runner = runner or local_runner
    t0 = time.time()
    raw_path = resolve_raw(source, raw)
    bad = BadRows(on_bad_rows)
    chunks = module.plan(raw_path, category)
    for i, c in enumerate(chunks):
        c["index"] = i
    rules = module.rules()
    if rating_range is not None:
        lo, hi = rating_range
        if not lo < hi:
            raise RawDataError(f"--rating-range: low {lo} must be below high {hi}")
        rules.rating_range = (float(lo), float(hi))
    time_kind = module.time_kind(chunks)
    if time_kind == "order-only":  # `ts` is a position: there is no time window to check
        rules.check_ts = False
    pseudo = pseudonymiser or Pseudonymiser(load_key())
    n_buckets = buckets or max(1, math.ceil(_estimate_rows(chunks) / ROWS_PER_BUCKET))
    catalogue = module.catalogue(raw_path, category, bad)  # fail fast on a broken catalogue, before the stages
    tomb_path = tombstones if tombstones else default_location()
    erased = open_list(tomb_path).load() if tomb_path else frozenset()

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        ctx = PrepContext(source=source, work=str(work), key=pseudo.key, rules=rules, on_bad_rows=on_bad_rows,
                          buckets=n_buckets, paths=[c["path"] for c in chunks], erased=erased)
        def run(fn: Callable[[dict], dict], tasks: list[dict], stage: str) -> list[dict]:
            if progress is None:
                return runner(fn, tasks, stage)
            return runner(fn, tasks, stage, Progress(f"prepare: {stage}", len(tasks), "tasks", out=progress))

        t1 = time.time()
        staged = run(partial(stage_rows, ctx=ctx), chunks, "stage rows")
        _failed(staged, "index")
        t2 = time.time()
        _said(progress, "stage rows", sum(json.loads(r["stats"])["counts"].get("read", 0) for r in staged), t2 - t1)
        split = run(partial(split_bucket, ctx=ctx), [{"bucket": b} for b in range(n_buckets)], "split users")
        _failed(split, "bucket")
        t3 = time.time()
        _said(progress, "split users", sum(json.loads(r["stats"]).get("interactions", 0) for r in split), t3 - t2)
        shutil.rmtree(work / "_stage", ignore_errors=True)

        stage_stats = [json.loads(r["stats"]) for r in staged]
        bucket_stats = {int(r["bucket"]): json.loads(r["stats"]) for r in split}
        split_stats = [st for st in bucket_stats.values() if not st.get("empty")]
        for s in stage_stats + split_stats:
            bad.merge(s.get("bad", {}), s.get("examples", []))
        n_inter = sum(s["interactions"] for s in split_stats)
        if n_inter == 0:
            raise RawDataError(f"{raw_path}: no interactions left after reading {len(chunks)} file chunk(s)"
                               + (f" ({bad.summary()['skipped']} bad rows skipped)" if bad.counts else ""))
        interacted = sorted(set().union(*(s["items"] for s in split_stats)))
        snippet_dir = work / "item_review_snippets.parquet"
        snippets = pd.read_parquet(snippet_dir) if any(snippet_dir.iterdir()) else pd.DataFrame(
            columns=["item", "snippet", "reviews"])
        items = item_table(catalogue, interacted, snippets)
        changes = read_catalog_changes(catalog_feedback) if catalog_feedback else []
        if changes:
            before = set(items["item"].astype(str))
            items = fold_catalog(items, changes)
        items.to_parquet(work / "items.parquet", index=False)
        catalog = {"changes": len(changes), "last_id": int(changes[-1].id) if changes else 0,
                   "items_added": len(set(items["item"].astype(str)) - before) if changes else 0}

        split_counts: Counter = Counter()
        event_counts: Counter = Counter()
        scrubbed: Counter = Counter()
        for s in split_stats:
            split_counts.update(s["split"])
            event_counts.update(s["events"])
        for s in stage_stats:
            scrubbed.update(s["scrubbed"])
        bucket_hashes = {b: st.get("hash", "") for b, st in bucket_stats.items()}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset_id": uuid.uuid4().hex[:12],
            "source": source,
            "category": category or module.dataset_name(raw_path, None),
            # "order-only": the source has no timestamps; `ts` is each user's position, so only order is real
            "time": time_kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "counts": {"interactions": n_inter, "users": sum(s["users"] for s in split_stats),
                       "items": len(items), "reviews": sum(s["reviews"] for s in split_stats),
                       "evaluated_users": int(split_counts.get("test", 0)),
                       "split": dict(split_counts), "events": dict(event_counts),
                       "items_text_from_reviews": int((items["text_source"] == "reviews").sum()),
                       "rows_read": sum(s["counts"].get("read", 0) for s in stage_stats)},
            "bad_rows": bad.summary(),
            "duplicates": {"policy": rules.duplicates,
                           "repeated_events": sum(s["repeated_events"] for s in split_stats)},
            "rules": {k: v for k, v in asdict(rules).items() if k != "max_ts"},
            "pii_scrubbed": {k: int(v) for k, v in sorted(scrubbed.items()) if v},
            "data_hash": combine_hashes(bucket_hashes),
            "bucket_hashes": {str(k): v for k, v in sorted(bucket_hashes.items())},
            "buckets": n_buckets,
            "pseudonymisation": {"method": "hmac-sha256", "key_fingerprint": pseudo.fingerprint},
            "preparation": {"engine": engine, "chunks": len(chunks), "buckets": n_buckets,
                            "stage_rows_s": round(t2 - t1, 2), "split_users_s": round(t3 - t2, 2)},
            "catalog": catalog,
            "erasures": [],
            "tombstoned": {"list": str(tomb_path) if tomb_path else None, "pseudonyms": len(erased),
                           "rows_dropped": sum(s["counts"].get("tombstoned", 0) for s in stage_stats)},
            "seconds": round(time.time() - t0, 2),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _said(out: TextIO | None, stage: str, rows: int, seconds: float) -> None:
    """The closing line of a stage: rows through it and their rate."""
    if out is not None:
        out.write(f"prepare: {stage}: {rows:,} rows in {format_duration(seconds)}, "
                  f"{format_rate(rows / max(seconds, 1e-9), 'rows')}\n")
        out.flush()


def combine_hashes(bucket_hashes: dict) -> str:
    """One data hash from per-bucket hashes (keys are bucket numbers, as ints or, from JSON, strings)."""
    h = hashlib.sha256()
    for _, digest in sorted((int(b), d) for b, d in bucket_hashes.items()):
        h.update(str(digest).encode())
    return h.hexdigest()[:16]


def publish(work: Path, out: Path) -> None:
    """Rename a finished directory into place; a previous dataset there is replaced only once this one is whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        work.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

