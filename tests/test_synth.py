"""Synthetic platform event log: layout, schema, funnel consistency, popularity, determinism, safety."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.generate import synth
from prefmine.data.synth.schema import END_TS, EVENTS_SCHEMA, ITEMS_SCHEMA, START_TS
from prefmine.data.synth.vocabulary import CATEGORY_TREE

USERS, ITEMS, EVENTS, PER_PART = 2000, 1000, 100_000, 30_000


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "log"
    manifest = synth(out, SynthConfig(users=USERS, items=ITEMS, events=EVENTS, events_per_part=PER_PART))
    return out, manifest


@pytest.fixture(scope="module")
def events(log_dir) -> pd.DataFrame:
    out, _ = log_dir
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / "events").iterdir())).to_pandas()


@pytest.fixture(scope="module")
def items(log_dir) -> pd.DataFrame:
    return pq.read_table(log_dir[0] / "items.parquet").to_pandas()


def _read_csv_dir(out) -> tuple[pa.Table, pa.Table]:
    def read(path, schema):
        convert = pacsv.ConvertOptions(column_types=schema, strings_can_be_null=True)
        table = pacsv.read_csv(path, convert_options=convert)
        assert table.column_names == schema.names
        return table.cast(schema)

    parts = sorted((out / "events").iterdir())
    return pa.concat_tables(read(p, EVENTS_SCHEMA) for p in parts), read(out / "items.csv", ITEMS_SCHEMA)


def test_layout_counts_and_parts(log_dir, events):
    out, manifest = log_dir
    parts = sorted((out / "events").iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.read_metadata(p).num_rows for p in parts] == [PER_PART] * 3 + [EVENTS - 3 * PER_PART]
    assert sorted(q.name for q in out.iterdir()) == ["events", "items.parquet", "synth.json"]
    assert json.loads((out / "synth.json").read_text()) == manifest
    assert (manifest["users"], manifest["items"], manifest["events"], manifest["seed"], manifest["parts"]) == (
        USERS, ITEMS, EVENTS, 0, 4)
    assert manifest["counts"] == events.event_type.value_counts().to_dict()
    assert sum(manifest["counts"].values()) == EVENTS == len(events)
    assert not list(out.parent.glob(".log.tmp-*"))


def test_schema(log_dir):
    out, _ = log_dir
    for part in (out / "events").iterdir():
        assert pq.read_schema(part).remove_metadata() == EVENTS_SCHEMA
    assert pq.read_schema(out / "items.parquet").remove_metadata() == ITEMS_SCHEMA


def test_csv_matches_parquet(tmp_path):
    cfg = dict(users=300, items=200, events=20_000, events_per_part=7_000, seed=3)
    synth(tmp_path / "pq", SynthConfig(**cfg))
    manifest = synth(tmp_path / "csv", SynthConfig(**cfg, fmt="csv"))
    parts = sorted((tmp_path / "csv" / "events").iterdir())
    assert [p.name for p in parts] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"] and manifest["parts"] == 3
    assert parts[0].read_text().splitlines()[0].replace('"', "") == ",".join(EVENTS_SCHEMA.names)
    assert (tmp_path / "csv" / "items.csv").read_text().splitlines()[0].replace('"', "") == ",".join(ITEMS_SCHEMA.names)
    csv_events, csv_items = _read_csv_dir(tmp_path / "csv")
    assert csv_events.num_rows == 20_000
    pq_events = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "pq" / "events").iterdir()))
    assert csv_events.equals(pq_events)  # same data, nulls written as empty fields
    assert csv_items.equals(pq.read_table(tmp_path / "pq" / "items.parquet").replace_schema_metadata(None))


def test_values(events):
    assert set(events.event_type) == {"view", "click", "cart", "buy", "rate"}
    is_rate = events.event_type == "rate"
    assert (events.rating.notna() == is_rate).all()
    assert events.rating[is_rate].isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    assert events.rating[is_rate].mean() > 3.8  # skewed to 4-5
    assert events.review_title.notna().le(is_rate).all() and events.review_text.notna().le(is_rate).all()
    assert (events.review_title.notna() == events.review_text.notna()).all()
    assert 0.7 < events.review_text[is_rate].notna().mean() < 1.0
    assert events.timestamp.between(START_TS, END_TS - 1).all()
    assert not events.duplicated(["user_id", "item_id", "timestamp", "event_type"]).any()  # a reader's bad row


def test_ids_in_range(events, items):
    assert events.user_id.str.fullmatch(r"u\d{7}").all() and events.item_id.str.fullmatch(r"i\d{6}").all()
    assert events.user_id.str[1:].astype(int).max() < USERS
    assert events.item_id.str[1:].astype(int).max() < ITEMS
    assert list(items.item_id) == [f"i{i:06d}" for i in range(ITEMS)]
    assert set(events.item_id) <= set(items.item_id)


def test_funnel_consistency(events):
    """Every buy follows a cart of the same user+item, every rate a buy; counts shrink down the funnel."""
    first = events.groupby(["user_id", "item_id", "event_type"]).timestamp.min().unstack()
    for later, earlier in (("buy", "cart"), ("rate", "buy"), ("cart", "click"), ("click", "view")):
        ev = events[events.event_type == later].join(first[earlier], on=["user_id", "item_id"])
        assert (ev[earlier] <= ev.timestamp).all(), (later, earlier)
    n = events.event_type.value_counts()
    assert n["view"] > n["click"] > n["cart"] > n["buy"] > n["rate"] > 0
    assert 0.3 <= n["click"] / n["view"] <= 0.5 and 0.1 <= n["cart"] / n["click"] <= 0.2
    assert 0.3 <= n["buy"] / n["cart"] <= 0.6 and 0.2 <= n["rate"] / n["buy"] <= 0.4


def test_sessions_bursts_days_apart(events):
    # Each user's rows are written in time order (sessions in start order, events in session order).
    assert (events.groupby("user_id", sort=False).timestamp.diff().dropna() >= 0).all()
    gaps = events.groupby("user_id").timestamp.diff().dropna()
    within, between = gaps[gaps < 3600], gaps[gaps >= 3600]
    assert within.median() < 120 and len(within) > 0.7 * len(gaps)
    assert between.median() > 86400


def test_popularity_and_activity_heavy_tailed(events):
    views = events[events.event_type == "view"].item_id.value_counts()
    assert views.iloc[: ITEMS // 10].sum() > 0.4 * views.sum()
    per_user = events.user_id.value_counts()
    assert per_user.iloc[: len(per_user) // 10].sum() > 0.3 * len(events)


def test_text_follows_category_and_rating(events, items):
    cats = {path: (nouns, attrs) for path, nouns, attrs, _ in CATEGORY_TREE}
    assert 20 <= items.categories.nunique() <= 50
    assert items.categories.str.count(" > ").between(1, 2).all()
    for title, cat in zip(items.title, items.categories):
        assert any(noun.lower() in title.lower() for noun in cats[cat][0]), (title, cat)
    reviews = events[events.review_text.notna()].join(items.set_index("item_id").categories, on="item_id")
    for text, cat in zip(reviews.review_text, reviews.categories):
        assert any(noun in text for noun in cats[cat][0]), (text, cat)
    positive = reviews[reviews.rating >= 4].review_text.str.contains("great|excellent|fantastic|perfect|recommend")
    negative = reviews[reviews.rating <= 2].review_text.str.contains("disappoint|flimsy|cheap|defective|useless|poorly")
    assert positive.mean() > 0.8 and negative.mean() > 0.8


def test_deterministic(tmp_path):
    def run(name, seed):
        cfg = SynthConfig(users=50, items=40, events=12_345, events_per_part=1000, seed=seed)
        manifest = synth(tmp_path / name, cfg)
        parts = sorted((tmp_path / name / "events").iterdir())
        assert len(parts) == manifest["parts"] == 13
        table = pa.concat_tables(pq.read_table(p) for p in parts)
        assert table.num_rows == 12_345
        return manifest, table, pq.read_table(tmp_path / name / "items.parquet")

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert a[0] == b[0] and a[1].equals(b[1]) and a[2].equals(b[2])
    assert not a[1].equals(c[1]) and not a[2].equals(c[2])


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        synth(out, SynthConfig(users=5, items=5, events=100))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    synth(empty, SynthConfig(users=5, items=5, events=100))  # an empty directory is fine
    assert (empty / "synth.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # no temporary left behind


@pytest.mark.parametrize(
    "field,value",
    [("users", 0), ("items", -1), ("events", 1.5), ("users", True), ("seed", -1), ("events_per_part", 0),
     ("fmt", "json"), ("zipf_a", 0.0), ("p_click", 1.5)],
)
def test_validation(field, value):
    kwargs = dict(users=10, items=10, events=10)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_content_items_are_dated_before_their_events_and_survive_preparation(tmp_path, monkeypatch):
    """With content_share, a share of the items are articles and videos with a publication time no later than
    their first event; the other columns do not change; `prepare --source events` keeps kind and published as
    item columns, the bundle's catalogue and request-time rules read them."""
    from prefmine.bundle import CATALOG_COLUMNS, CATALOG_OPTIONAL
    from prefmine.data.dataset import load_dataset
    from prefmine.data.prepare import prepare
    from prefmine.rules import ItemAttributes

    plain = synth(tmp_path / "plain", SynthConfig(users=300, items=200, events=6000, seed=3))
    content = synth(tmp_path / "content", SynthConfig(users=300, items=200, events=6000, seed=3, content_share=0.3))
    assert plain["counts"] == content["counts"]
    before = pq.read_table(tmp_path / "plain" / "items.parquet")
    after = pq.read_table(tmp_path / "content" / "items.parquet")
    assert before.schema == ITEMS_SCHEMA and after.select(ITEMS_SCHEMA.names).equals(before)
    items = after.to_pandas()
    assert set(items["kind"]) == {"product", "article", "video"}
    assert 0.15 < (items["kind"] != "product").mean() < 0.45
    assert items.loc[items["kind"] == "product", "published"].isna().all()
    dated = items[items["kind"] != "product"].set_index("item_id")["published"]
    assert dated.notna().all() and dated.between(START_TS, END_TS).all()
    ev = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "content" / "events").glob("*.parquet")))
    first = ev.groupby("item_id")["timestamp"].min()
    seen = dated.index.intersection(first.index)
    assert len(seen) and (dated[seen] <= first[seen]).all()  # nothing is viewed before it is published

    monkeypatch.setenv("PREFMINE_PSEUDONYM_KEY", "prefmine-test-key")
    prepare("events", tmp_path / "content", tmp_path / "prepared", engine="local")
    ds = load_dataset(tmp_path / "prepared")
    assert {"kind", "published"} <= set(ds.items.columns)
    attrs = ItemAttributes.from_items(ds.items[CATALOG_COLUMNS + ["kind", "published"]])
    assert set(attrs.kind) == {"product", "article", "video"} and set(CATALOG_OPTIONAL) >= {"kind", "published"}
    assert np.isfinite(attrs.published).sum() == int((attrs.kind != "product").sum()) > 0
