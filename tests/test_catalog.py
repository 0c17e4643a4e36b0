"""The live catalogue's library: row validation (bad rows named, good rows kept), the change log in both feedback
store backends (durable, idempotent per key, paged by increasing id, tables added to an older store), the bulk
load (JSONL and CSV, `prefmine catalog load`) and folding the log into a dataset's items for the next bundle."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from prefmine.catalog import CatalogState, validate_rows
from prefmine.catalog.load import load_file
from prefmine.data.catalog_fold import fold_catalog
from prefmine.feedback import IdempotencyConflict, open_feedback_store


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    """A fresh store: a SQLite path, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def test_bad_rows_are_named_and_good_rows_kept():
    rows = [
        {"item": "new-1", "title": "Trail running shoe", "brand": "Acme", "categories": ["Shoes", "Running"],
         "price": "59.90", "available": "true", "kind": "product"},
        {"item": "new-2"},  # a new item without a title: nothing for the encoder to embed
        {"item": "known-1", "price": 3},  # a known item may leave its title out
        {"item": "", "title": "no id"},
        {"item": "new-3", "title": "x", "price": float("nan")},
        {"item": "new-4", "title": "x", "price": -1},
        {"item": "new-5", "title": "x", "available": "maybe"},
        {"item": "new-6", "title": "bad\x00title"},
        {"item": "new-7", "title": "x", "colour": "red"},
        {"item": "old-1", "op": "retire"},
        {"item": "old-2", "op": "retire", "title": "a retire carries no fields"},
        {"item": "old-3", "op": "delete"},
        "not a mapping",
        {"item": "new-8", "title": "x", "categories": ["c"] * 33},
    ]
    good, bad = validate_rows(rows, known={"known-1"})
    assert [(c.item, c.op) for c in good] == [("new-1", "upsert"), ("known-1", "upsert"), ("old-1", "retire")]
    assert good[0].fields == {"title": "Trail running shoe", "brand": "Acme", "categories": ["Shoes", "Running"],
                              "price": 59.9, "available": True, "kind": "product"}
    assert good[1].fields == {"price": 3.0}
    by_index = {e.index: e for e in bad}
    assert sorted(by_index) == [1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert by_index[1].item == "new-2" and "title is required" in by_index[1].reason
    assert "price" in by_index[4].reason and "price" in by_index[5].reason
    assert "available" in by_index[6].reason and "control character" in by_index[7].reason
    assert "colour" in by_index[8].reason and "retire carries no fields" in by_index[10].reason
    assert "op must be one of" in by_index[11].reason and by_index[12].item == ""
    assert "new-8" in str(by_index[13]) and "at most 32" in str(by_index[13])


def test_change_log_is_durable_idempotent_and_ordered(location):
    store = open_feedback_store(location)
    try:
        first, _ = validate_rows([{"item": "a", "title": "Alpha"}, {"item": "b", "title": "Beta", "price": 2}])
        last = store.append_catalog(first, idempotency_key="req-1")
        assert store.append_catalog(first, idempotency_key="req-1") == last  # a retry stores nothing
        with pytest.raises(IdempotencyConflict):
            store.append_catalog(first[:1], idempotency_key="req-1")
        second, _ = validate_rows([{"item": "a", "op": "retire"}, {"item": "b", "available": False}], known={"b"})
        last2 = store.append_catalog(second)
        assert last2 > last
        page = store.read_catalog_since(0, limit=3)
        rest = store.read_catalog_since(page[-1].id)
        log = page + rest
        assert [c.id for c in log] == sorted(c.id for c in log) and log[-1].id == last2
        assert [(c.item, c.op, c.fields) for c in log] == [
            ("a", "upsert", {"title": "Alpha"}), ("b", "upsert", {"title": "Beta", "price": 2.0}),
            ("a", "retire", {}), ("b", "upsert", {"available": False})]
    finally:
        store.close()
    reopened = open_feedback_store(location, create=False)  # what another replica (or a restart) reads
    try:
        assert [c.id for c in reopened.read_catalog_since(0)] == [c.id for c in log]
    finally:
        reopened.close()


WRITER = """
import sys
from prefmine.catalog import validate_rows
from prefmine.feedback import open_feedback_store
store = open_feedback_store(sys.argv[1])
for n in range(10_000):
    good, _ = validate_rows([{"item": f"w{n}", "title": f"item {n}"}])
    store.append_catalog(good, idempotency_key=f"w{n}")
    print(n, flush=True)
"""


def test_acknowledged_catalog_writes_survive_a_killed_writer(tmp_path):
    """A writer killed with SIGKILL right after acknowledging: every acknowledged change is in the SQLite file."""
    path = str(tmp_path / "feedback.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 20:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    acked += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    store = open_feedback_store(path, create=False)
    try:
        stored = {c.item for c in store.read_catalog_since(0)}
    finally:
        store.close()
    assert {f"w{n}" for n in acked} <= stored


def test_acknowledged_catalog_writes_survive_a_postgres_crash(postgres_server):
    """Acknowledged changes are in the restarted server after `pg_ctl stop -m immediate` (no checkpoint)."""
    location = postgres_server.new_database()
    store = open_feedback_store(location)
    try:
        good, _ = validate_rows([{"item": f"p{n}", "title": f"item {n}"} for n in range(5)])
        last = store.append_catalog(good, idempotency_key="crash-1")
    finally:
        store.close()
    postgres_server.stop("immediate")
    postgres_server.start()
    store = open_feedback_store(location, create=False)
    try:
        log = store.read_catalog_since(0)
        assert [c.item for c in log] == [f"p{n}" for n in range(5)] and log[-1].id == last
        assert store.append_catalog(good, idempotency_key="crash-1") == last  # the key survived too
    finally:
        store.close()


def test_an_older_sqlite_store_gains_the_catalog_tables(tmp_path):
    """A feedback file written before the live catalogue opens with its events intact and takes changes."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, "
                         "item TEXT NOT NULL, event TEXT NOT NULL, ts INTEGER NOT NULL, rating REAL, "
                         "received REAL NOT NULL);"
                         "INSERT INTO feedback(user, item, event, ts, rating, received) "
                         "VALUES ('u', 'i', 'buy', 1, NULL, 0);")
    store = open_feedback_store(path, create=False)
    try:
        assert store.count() == 1
        good, _ = validate_rows([{"item": "n", "title": "New"}])
        assert store.append_catalog(good) == 1 and store.read_catalog_since(0)[0].item == "n"
    finally:
        store.close()


def test_bulk_load_of_jsonl_and_csv_through_the_command_line(tmp_path):
    from prefmine.cli.main import main

    store_path = str(tmp_path / "feedback.sqlite")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("\n".join([json.dumps({"item": "j1", "title": "Lip balm", "categories": ["Beauty"],
                                            "description": "Tinted, with shea butter"}),
                                "{not json", json.dumps({"item": "j2", "title": "Serum", "price": "abc"}),
                                json.dumps({"item": "j3", "title": "Toner", "available": False}),
                                json.dumps({"item": "j4", "title": "Mask", "description": "clay\x01mask"})]) + "\n")
    csv = tmp_path / "items.csv"
    csv.write_text("item,op,title,brand,categories,price,available,description\n"
                   'c1,,Face wash,Acme,Beauty|Skin Care,7.5,true,"Gentle, foaming; for dry skin"\n'
                   "j1,,,,,3,,\n"  # a known item (from the JSONL load): price only, its description kept
                   "j3,retire,,,,,,\n"
                   "c2,,,,,,,\n")  # new without a title: refused
    assert main(["catalog", "load", "--feedback", store_path, "--file", str(jsonl), "--key", "load-1"]) == 1
    assert main(["catalog", "load", "--feedback", store_path, "--file", str(jsonl), "--key", "load-1"]) == 1
    assert main(["catalog", "load", "--feedback", store_path, "--file", str(csv)]) == 1
    store = open_feedback_store(store_path, create=False)
    try:
        log = store.read_catalog_since(0)
        res = load_file(store, jsonl, key_prefix="load-1")  # the library call the CLI makes: same key, no new rows
    finally:
        store.close()
    assert [(c.item, c.op) for c in log] == [("j1", "upsert"), ("j3", "upsert"), ("c1", "upsert"), ("j1", "upsert"),
                                             ("j3", "retire")]  # the JSONL load stored once despite the rerun
    assert log[2].fields == {"title": "Face wash", "brand": "Acme", "categories": ["Beauty", "Skin Care"],
                             "price": 7.5, "available": True, "description": "Gentle, foaming; for dry skin"}
    assert log[0].fields["description"] == "Tinted, with shea butter" and log[3].fields == {"price": 3.0}
    assert res.stored == 2 and res.last_id == log[1].id
    assert [(e.index, e.item) for e in res.errors] == [(1, ""), (2, "j2"), (4, "j4")]
    assert "not JSON" in res.errors[0].reason and "description contains a control character" in res.errors[2].reason


def test_the_next_bundle_items_hold_new_items_and_mark_retired_ones_unavailable():
    """fold_catalog: what `data prepare --catalog-feedback` hands to the next training run. Every upserted field
    reaches the items (price and availability too, with columns the catalogue did not have), a retired item
    that has interactions stays (its events stay in the histories) but unavailable, one new and retired again
    is never appended, and a new row's side columns are empty of their kind (NaN for a number)."""
    items = pd.DataFrame({"item": ["a", "b", "c"], "title": ["A", "B", "C"], "brand": ["x", "y", "z"],
                          "categories": [["k"], [], ["k", "m"]], "description": ["", "", "about c"],
                          "text": ["A", "B", "C"], "text_source": ["catalogue"] * 3, "extra": [1.0, 2.0, 3.0],
                          "colour": ["red", "", "blue"]})
    good, bad = validate_rows([{"item": "d", "title": "D", "price": 4}, {"item": "b", "op": "retire"},
                               {"item": "c", "title": "C2", "available": False}, {"item": "e", "title": "E"},
                               {"item": "e", "op": "retire"}, {"item": "a", "price": 2.5, "kind": "article"}],
                              known={"a", "b", "c"})
    assert not bad
    folded = fold_catalog(items, good)
    assert folded["item"].tolist() == ["a", "b", "c", "d"]
    row = folded.set_index("item")
    assert row["available"].tolist() == [True, False, False, True]
    assert row.loc["c", "title"] == "C2" and row.loc["c", "categories"] == ["k", "m"] and "C2" in row.loc["c", "text"]
    assert row.loc["d", "price"] == 4.0 and row.loc["a", "price"] == 2.5 and math.isnan(row.loc["b", "price"])
    assert row["kind"].tolist() == ["article", "", "", ""] and row.loc["d", "text_source"] == "catalogue"
    assert row.loc["a", "extra"] == 1 and math.isnan(row.loc["d", "extra"]) and row.loc["d", "colour"] == ""
    path = Path(tempfile.mkdtemp()) / "items.parquet"
    folded.to_parquet(path, index=False)  # what prepare writes: every column one type
    assert pd.read_parquet(path)["price"].tolist()[:1] == [2.5]
    state = CatalogState(items)
    state.apply(good)
    assert state.servable("a") and not state.servable("b") and not state.servable("c") and state.servable("d")
    assert CatalogState(folded).servable("a") and not CatalogState(folded).servable("b")  # without the log too


def test_a_replica_poller_follows_the_log_and_keeps_its_state_when_the_store_fails(tmp_path):
    """prefmine.serving.live_catalog on a real SQLite store: retired and unavailable ids blocked, an item
    upserted again unblocked, bundle indexes mapped (unknown ids left out), and a store that fails to answer
    leaves the last state (a retired item is never shown again because of a read error)."""
    from prefmine.serving.live_catalog import LiveCatalog, LiveCatalogConfig

    path = str(tmp_path / "feedback.sqlite")
    store = open_feedback_store(path)
    live = LiveCatalog(store, LiveCatalogConfig(interval_s=0.0, page=2))
    index = {"a": 0, "b": 1, "c": 2}.get
    good, _ = validate_rows([{"item": "a", "op": "retire"}, {"item": "b", "available": False},
                             {"item": "new", "title": "New"}, {"item": "gone", "op": "retire"}], known={"b"})
    store.append_catalog(good)
    assert live.refresh() is None
    assert live.blocked == {"a", "b", "gone"} and set(live.written) == {"b", "new"} and live.last_id == 4
    assert live.blocked_indices("v1", index) == {0, 1}
    again, _ = validate_rows([{"item": "b", "available": True}], known={"b"})
    store.append_catalog(again)
    live.refresh()
    assert live.blocked_indices("v1", index) == {0} and live.written["b"]["available"] is True
    assert live.written["new"]["title"] == "New" and live.written["new"]["kind"] == ""  # folded as prepare folds
    store.close()  # the store goes away: the poll fails, the state stays
    assert isinstance(live.refresh(), Exception) and live.blocked_indices("v1", index) == {0}


def test_upserted_fields_of_bundle_items_reach_the_rules_at_once(tmp_path):
    """An upsert naming a bundle item's price (or categories, brand, kind, publication time) changes that field in
    the rules' attributes the replica serves with, and only that field; a retire forgets what the log gave; new
    items and untouched bundle items keep theirs. On a real SQLite store, through the replica's poller."""
    import numpy as np

    from prefmine.rules import ItemAttributes, Rules
    from prefmine.serving.live_catalog import LiveCatalog, LiveCatalogConfig
    from prefmine.serving.new_items import with_updates
    from prefmine.serving.request_rules import allowed_mask

    attrs = ItemAttributes.from_items(pd.DataFrame({
        "item": ["a", "b", "c"], "categories": [["Knitting"], ["Cars"], ["Knitting"]], "brand": ["Ewe", "Vroom", "Ewe"],
        "price": [10.0, 20.0, 30.0], "kind": ["product"] * 3}))
    store = open_feedback_store(str(tmp_path / "feedback.sqlite"))
    live = LiveCatalog(store, LiveCatalogConfig(interval_s=0.0))
    good, _ = validate_rows([{"item": "a", "price": 99.0}, {"item": "b", "categories": ["Knitting"], "kind": "article"},
                             {"item": "new", "title": "New", "price": 1.0}], known={"a", "b", "c"})
    store.append_catalog(good)
    live.refresh()
    got = with_updates(attrs, live.given(), attrs.index)
    assert list(got.price[:3]) == [99.0, 20.0, 30.0] and list(got.brand) == ["Ewe", "Vroom", "Ewe"]
    assert got.categories[1] == {"Knitting"} and list(got.kind) == ["product", "article", "product"]
    assert list(attrs.price) == [10.0, 20.0, 30.0]  # the bundle's own attributes are not changed in place
    cheap = Rules(price_max=50.0)
    assert allowed_mask(got, cheap).tolist() == [False, True, True]
    retire, _ = validate_rows([{"item": "a", "op": "retire"}, {"item": "a", "brand": "Ram"}], known={"a"})
    store.append_catalog(retire)
    live.refresh()
    again = with_updates(attrs, live.given(), attrs.index)
    assert again.price[0] == 10.0 and again.brand[0] == "Ram"  # after the retire only the later upsert's field
    assert with_updates(attrs, {"new": {"price": 1.0}}, attrs.index) is attrs  # not a bundle item: nothing to do
    assert np.isnan(with_updates(attrs, {"c": {"price": None}}, attrs.index).price[2])
    store.close()


def test_new_items_become_served_item_vectors(bundle_path):
    """prefmine.serving.new_items on a trained bundle's own encoder and ranker (no Ray): written items the bundle
    does not hold get the encoder's embedding of their text and the ranker vector the fused ranker gives a cold
    item with that text (the model's own item_vectors with the item marked cold); a retired one leaves the next
    snapshot, an unchanged one keeps its vectors without being embedded again, and the cap holds."""
    import numpy as np
    import torch

    from prefmine.bundle import Bundle
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.serving.new_items import NewItems, new_item_text, new_items_from
    from prefmine.text.runtime import EncoderRuntime

    bundle = Bundle.load(bundle_path)
    ranker, encoder = RankerRuntime(bundle_path), EncoderRuntime(bundle_path)
    written = {"new-a": {"title": "Garden Hose Reel", "brand": "Acme", "categories": ["Garden", "Hoses"]},
               bundle.item_ids[0]: {"title": "an update of a bundle item"},  # held by the bundle: not new
               "new-b": {"title": "Stainless Steel Water Bottle", "price": 12.0}}
    new = new_items_from(NewItems(bundle.n_items), written, bundle.item_index, 10, encoder.embed, ranker.cold_vectors)
    assert new.ids == ("new-a", "new-b") and new.index("new-b") == bundle.n_items + 1 and new.digest
    assert new.texts[0] == "Garden Hose Reel . Acme . Garden / Hoses"
    expected_text = encoder.embed([new_item_text(f) for f in (written["new-a"], written["new-b"])])
    np.testing.assert_allclose(new.text_vectors, expected_text, atol=1e-5)
    # the ranker vectors are the model's cold-item vectors: a bundle item given these texts and marked cold
    model = ranker.model
    with torch.no_grad():
        text, warm = model.text[1:3].clone(), model.warm[1:3].clone()
        model.text[1:3], model.warm[1:3] = torch.as_tensor(new.text_vectors), False
        expected = model.item_vectors(torch.tensor([1, 2])).numpy()
        model.text[1:3], model.warm[1:3] = text, warm
    np.testing.assert_allclose(new.vectors, expected, atol=1e-5)
    # retire new-a: it leaves the snapshot, new-b keeps its vectors (nothing to embed: embed must not be called)
    del written["new-a"]

    def no_embedding(texts):
        raise AssertionError(f"embedded again: {texts}")

    again = new_items_from(new, written, bundle.item_index, 10, no_embedding, ranker.cold_vectors)
    assert again.ids == ("new-b",) and again.index("new-b") == bundle.n_items and again.digest != new.digest
    np.testing.assert_array_equal(again.vectors[0], new.vectors[1])
    assert new_items_from(again, written, bundle.item_index, 10, no_embedding, ranker.cold_vectors) is again
    written["new-c"] = {"title": "Third"}
    assert new_items_from(again, written, bundle.item_index, 1, encoder.embed, ranker.cold_vectors).ids == ("new-b",)


def test_prepare_folds_the_catalogue_log_into_the_next_datasets_items(raw_dir, tmp_path):
    """`data prepare --catalog-feedback STORE`: the store's catalogue changes reach the next bundle's data set. A
    new item is appended with its description and text (and no interactions: the data set loads, the item cold), an upsert's
    title replaces the catalogue's in the title and the text, a written kind and publication time are kept, a new
    item retired later is not there, and a retired item with interactions stays (its events are in the
    histories)."""
    from prefmine.data.dataset import load_dataset
    from prefmine.data.prepare import prepare

    plain = tmp_path / "plain"
    prepare("amazon2018", raw_dir / "amazon2018", plain, "Gift_Cards")
    base = pd.read_parquet(plain / "items.parquet")
    renamed, retired = str(base["item"].iloc[0]), str(base["item"].iloc[1])
    rows = [{"item": "fold-new", "title": "Folded Gift Card", "brand": "Acme", "categories": ["Gift Cards"],
             "kind": "article", "published": 1_700_000_000, "description": "Redeemable at any branch"},
            {"item": "fold-gone", "title": "Written then retired"},
            {"item": renamed, "title": "A renamed card"},
            {"item": "fold-gone", "op": "retire"}, {"item": retired, "op": "retire"}]
    good, bad = validate_rows(rows, known={renamed, retired})
    assert not bad
    store = open_feedback_store(str(tmp_path / "feedback.sqlite"))
    store.append_catalog(good, idempotency_key="fold-test")
    store.close()
    folded = tmp_path / "folded"
    m = prepare("amazon2018", raw_dir / "amazon2018", folded, "Gift_Cards",
                catalog_feedback=str(tmp_path / "feedback.sqlite"))
    items = pd.read_parquet(folded / "items.parquet").set_index("item")
    assert m["catalog"] == {"changes": 5, "last_id": 5, "items_added": 1} and m["counts"]["items"] == len(base) + 1
    assert len(items) == len(base) + 1 and "fold-gone" not in items.index and retired in items.index
    assert items.loc["fold-new", "text"] == "Folded Gift Card . Acme . Gift Cards . Redeemable at any branch"
    assert items.loc["fold-new", "description"] == "Redeemable at any branch"
    assert list(items.loc["fold-new", "categories"]) == ["Gift Cards"]
    assert items.loc[renamed, "title"] == "A renamed card" and items.loc[renamed, "text"].startswith("A renamed card")
    # content fields: the catalogue had none, so the columns are added (empty kind, unknown publication time)
    assert items.loc["fold-new", "kind"] == "article" and items.loc["fold-new", "published"] == 1.7e9
    assert items.loc[renamed, "kind"] == "" and pd.isna(items.loc[renamed, "published"])
    ds = load_dataset(folded)
    assert ds.item_index["fold-new"] == len(base) and ds.n_items == len(base) + 1


def test_published_is_checked_stored_and_folded():
    """A write's publication time (content items): Unix seconds or ISO 8601 text, stored as seconds, refused when
    negative, not finite, unreadable or on a retire; applied by CatalogState and folded into the items (a column
    added where the catalogue had none); a new item's rule attributes carry it, so the freshness rule decays it."""
    import math

    import numpy as np

    from prefmine.rules import ItemAttributes, Rules, select
    from prefmine.serving.new_items import NewItems

    rows = [{"item": "art-1", "title": "An article", "kind": "article", "published": "2026-12-01T00:00:00Z"},
            {"item": "art-2", "title": "Another", "kind": "article", "published": 1_700_000_000},
            {"item": "a", "published": "1764547200.5"},
            {"item": "bad-1", "title": "x", "published": -1},
            {"item": "bad-2", "title": "x", "published": "yesterday"},
            {"item": "bad-3", "title": "x", "published": float("inf")},
            {"item": "bad-4", "title": "x", "published": True},
            {"item": "b", "op": "retire", "published": 5}]
    good, bad = validate_rows(rows, known={"a", "b"})
    assert [c.item for c in good] == ["art-1", "art-2", "a"]
    assert good[0].fields["published"] == 1_796_083_200.0 and good[1].fields["published"] == 1.7e9
    assert good[2].fields == {"published": 1_764_547_200.5}
    assert [e.index for e in bad] == [3, 4, 5, 6, 7] and all("published" in e.reason for e in bad[:4])
    items = pd.DataFrame({"item": ["a", "b"], "title": ["A", "B"], "brand": ["", ""], "categories": [[], []],
                          "description": ["", ""], "text": ["A", "B"], "text_source": ["catalogue"] * 2})
    folded = fold_catalog(items, good).set_index("item")
    assert folded.loc["a", "published"] == 1_764_547_200.5 and folded.loc["art-1", "kind"] == "article"
    assert math.isnan(folded.loc["b", "published"])
    state = CatalogState(folded.reset_index())
    assert state.items["art-2"]["published"] == 1.7e9 and math.isnan(state.items["b"]["published"])
    # a new item's attributes: a week-old article under a one-day half-life falls below a product it outranked
    base = ItemAttributes.from_items(pd.DataFrame({"item": ["p1", "p2"], "title": ["P1", "P2"]}))
    now = 1_800_000_000.0
    new = NewItems(2, ("art",), ({"title": "Art", "kind": "article", "published": now - 7 * 86400},), ("Art",),
                   np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), "d")
    attrs = new.attributes(base)
    assert attrs.published[2] == now - 7 * 86400 and attrs.kind[2] == "article" and np.isnan(attrs.published[:2]).all()
    scores = np.array([1.0, 0.0, 2.0])
    assert select(scores, attrs, Rules(), 3, now=now)[0].tolist() == [2, 0, 1]
    assert select(scores, attrs, Rules(freshness_half_life_s=86400.0), 3, now=now)[0].tolist() == [0, 1, 2]
    assert new.frame()["published"].tolist() == [now - 7 * 86400]


def test_new_items_take_their_slots_in_a_cold_start_slate():
    """prefmine.serving.recommend.with_fresh_slots: the newest new items outside the exclusions fill up to
    `slots` of the k, popular items the rest, ordered by popularity (a new item's prior); 0 slots is popularity
    alone; prior_popularity is the bundle's quantile; the config refuses a quantile outside [0, 1] and negative
    slots."""
    import numpy as np

    from prefmine.serving.new_items import prior_popularity
    from prefmine.serving.recommend import popularity_order, with_fresh_slots

    bundle_pop = np.array([9.0, 1.0, 5.0, 3.0, 7.0])
    prior = prior_popularity(bundle_pop, 0.5)
    assert prior == 5.0 and prior_popularity(bundle_pop, 1.0) == 9.0
    pop = np.concatenate([bundle_pop, [prior, prior]])  # items 5 and 6 are new; 6 is the newest
    order, fresh = popularity_order(pop), np.array([6, 5])
    assert with_fresh_slots(order, pop, 4, set(), fresh, 1).tolist() == [0, 4, 2, 6]
    assert with_fresh_slots(order, pop, 4, {6}, fresh, 1).tolist() == [0, 4, 2, 5]  # a blocked new item
    assert with_fresh_slots(order, pop, 4, {0}, fresh, 2).tolist() == [4, 2, 6, 5]
    assert with_fresh_slots(order, pop, 4, set(), fresh, 0).tolist() == order[:4].tolist() == [0, 4, 2, 5]
    assert with_fresh_slots(order, pop, 1, set(), fresh, 3).tolist() == [6]
    from prefmine.serving.live_catalog import LiveCatalogConfig

    for bad in ({"new_item_popularity_quantile": 1.5}, {"cold_start_new_slots": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LiveCatalogConfig(**bad)


def test_the_demo_folds_the_catalogue_its_server_logged(tmp_path, monkeypatch):
    """`prefmine demo` prepares its next data set with the catalogue log of the store its server writes to (beside
    the bundle, or $PREFMINE_FEEDBACK_DB) once one exists, and without it before (a first run)."""
    from prefmine.cli.demo import catalog_store

    monkeypatch.delenv("PREFMINE_FEEDBACK_DB", raising=False)
    bundle = tmp_path / "bundles" / "magazine"
    assert catalog_store(bundle) is None
    bundle.parent.mkdir(parents=True)
    open_feedback_store(str(bundle.parent / "feedback.sqlite")).close()
    assert catalog_store(bundle) == str(bundle.parent / "feedback.sqlite")
    monkeypatch.setenv("PREFMINE_FEEDBACK_DB", str(tmp_path / "elsewhere.sqlite"))
    assert catalog_store(bundle) is None


def test_description_is_checked_stored_and_read_back(tmp_path, raw_dir):
    """A write's description: kept as given (trimmed; its paragraph breaks and tabs as one space), refused row by
    row when longer than MAX_DESCRIPTION_CHARS, holding another control character, not a string or on a retire
    (the good rows kept); stored in the change log and read back, applied by CatalogState (an upsert without one
    keeps the earlier description)."""
    from prefmine.catalog.rows import MAX_DESCRIPTION_CHARS

    words = "The New Yorker: weekly reporting, commentary, fiction and cartoons."
    rows = [{"item": "mag-1", "title": "Magazine", "description": f"  {words} "},
            {"item": "bad-1", "title": "x", "description": "y" * (MAX_DESCRIPTION_CHARS + 1)},
            {"item": "bad-2", "title": "x", "description": "bell\x07inside"},
            {"item": "bad-3", "title": "x", "description": ["a", "list"]},
            {"item": "gone", "op": "retire", "description": "a retire carries no fields"},
            {"item": "long", "title": "x", "description": "z" * MAX_DESCRIPTION_CHARS},
            {"item": "mag-1", "price": 9.5},  # known by then: keeps its description
            {"item": "paras", "title": "x", "description": "First paragraph.\n\nSecond:\tmore.\r\n"}]
    good, bad = validate_rows(rows, known={"mag-1", "gone"})
    assert [c.item for c in good] == ["mag-1", "long", "mag-1", "paras"]
    assert good[3].fields["description"] == "First paragraph. Second: more."  # paragraphs, not refused
    assert good[0].fields == {"title": "Magazine", "description": words}
    assert len(good[1].fields["description"]) == MAX_DESCRIPTION_CHARS
    by_index = {e.index: e for e in bad}
    assert sorted(by_index) == [1, 2, 3, 4] and by_index[1].item == "bad-1"
    assert f"at most {MAX_DESCRIPTION_CHARS}" in by_index[1].reason and "description" in by_index[1].reason
    assert "description contains a control character" in by_index[2].reason
    assert "description must be a string" in by_index[3].reason
    assert "retire carries no fields" in by_index[4].reason and "description" in by_index[4].reason
    store = open_feedback_store(str(tmp_path / "feedback.sqlite"))
    try:
        store.append_catalog(good, idempotency_key="desc-1")
        log = store.read_catalog_since(0)
    finally:
        store.close()
    assert [c.fields for c in log] == [c.fields for c in good]
    # every real Magazine description, its paragraphs one per line as a shop's export writes them, is accepted
    import gzip

    with gzip.open(raw_dir / "amazon2018" / "Magazine_Subscriptions" / "meta_Magazine_Subscriptions.json.gz",
                   "rt") as f:
        metas = [json.loads(line) for line in f]
    exported = [{"item": m["asin"], "title": "t", "description": "\n".join(m["description"])}
                for m in metas if m.get("description")]
    kept, refused = validate_rows(exported)
    assert len(exported) > 2000 and not refused
    assert sum("\n" in r["description"] for r in exported) > 500
    state = CatalogState(pd.DataFrame({"item": ["old"], "title": ["Old"], "description": ["bundle words"]}))
    state.apply(log)
    assert state.items["mag-1"]["description"] == words and state.items["mag-1"]["price"] == 9.5
    assert state.items["old"]["description"] == "bundle words"
    assert state.to_frame().set_index("item").loc["mag-1", "description"] == words


def test_a_new_items_text_is_prepares_text_for_the_same_fields(magazine5):
    """new_item_text, what a replica embeds for a written item, is the text prepare gave each real Magazine item
    from the same title, brand, categories and description (the description after the rest); without the
    description it is the text prepare gives an item without one."""
    from prefmine.data.clean import item_text
    from prefmine.serving.new_items import new_item_text

    items = pd.read_parquet(magazine5 / "items.parquet")
    described = 0
    for row in items.itertuples():
        fields = {"title": row.title, "brand": row.brand, "categories": list(row.categories),
                  "description": row.description}
        assert new_item_text(fields) == row.text, row.item
        assert new_item_text({k: v for k, v in fields.items() if k != "description"}) == \
            item_text(row.title, row.brand, list(row.categories), "")
        described += bool(row.description)
    assert described > len(items) / 2  # the descriptions were there to compare


def test_the_fold_rebuilds_an_items_text_with_its_written_description():
    """fold_catalog: an upsert's description replaces the catalogue's and the text is rebuilt with it; an upsert
    without one keeps the catalogue's; a new item's description is its column's value and in its text, which is
    the text the replica embedded for it (new_item_text), HTML and entities cleaned as a source's."""
    from prefmine.serving.new_items import new_item_text

    items = pd.DataFrame({"item": ["a", "b"], "title": ["A", "B"], "brand": ["", "Acme"], "categories": [[], ["k"]],
                          "description": ["old words", "kept words"], "text": ["A . old words", "B . Acme . k . kept words"],
                          "text_source": ["catalogue"] * 2})
    new_fields = {"title": "Gardening Monthly", "categories": ["Magazines"],
                  "description": "Seasonal planting guides"}
    html = {"title": "Bird &amp; Blossom", "categories": ["Home &amp; Garden"],
            "description": "Tips &amp; <b>tricks</b>   for gardens"}  # as a shop's export may write them
    good, bad = validate_rows([{"item": "a", "description": "fresh words"}, {"item": "b", "price": 3},
                               {"item": "n", **new_fields}, {"item": "h", **html}], known={"a", "b"})
    assert not bad
    row = fold_catalog(items, good).set_index("item")
    assert row.loc["a", "description"] == "fresh words" and row.loc["a", "text"] == "A . fresh words"
    assert row.loc["b", "description"] == "kept words" and row.loc["b", "text"] == "B . Acme . k . kept words"
    assert row.loc["n", "description"] == "Seasonal planting guides"
    assert row.loc["n", "text"] == new_item_text(new_fields) == \
        "Gardening Monthly . Magazines . Seasonal planting guides"
    assert row.loc["h", "description"] == html["description"]  # stored as written, read cleaned
    assert row.loc["h", "text"] == new_item_text(html) == "Bird & Blossom . Home & Garden . Tips & tricks for gardens"


def test_search_finds_a_new_item_by_its_description_where_the_config_indexes_it(raw_dir):
    """A new item's description reaches Search's lexical side index (NewItems.search_catalog) when the search
    config's `lexical_fields` include it: a word only its description holds finds it, among real Magazine items;
    with the default fields the same word finds nothing."""
    import numpy as np

    from bench.search_relevance_reviews import WORD, files, load_catalogue
    from prefmine.search import SearchConfig, Searcher
    from prefmine.search.catalog import Catalog
    from prefmine.search.lexical import LexicalIndex
    from prefmine.serving.new_items import NewItems

    items = load_catalogue(files(raw_dir, "Magazine_Subscriptions")["metadata"])
    base = Catalog.from_items(items)
    every = " ".join(base.index_texts(("title", "brand", "categories", "description"))).casefold()
    word = "Quiltmakerzine"  # in no real item's fields
    assert word.casefold() not in every and WORD.fullmatch(word)
    fields = {"title": "Quilting Quarterly", "brand": "Acme", "categories": ["Crafts"],
              "description": f"{word}: patterns and techniques for quilters"}
    new = NewItems(len(base), ("new-quilt",), (fields,), ("",), np.ones((1, 8), np.float32),
                   np.ones((1, 8), np.float32), "d")
    assert new.frame()["description"].tolist() == [fields["description"]]
    vectors = np.eye(len(base), 8, dtype=np.float32) + 1e-3
    for config, found in ((SearchConfig(lexical_fields=("title", "brand", "categories", "description")), True),
                          (SearchConfig(), False)):
        main = LexicalIndex.build(base.index_texts(config.lexical_fields))
        searcher = Searcher(base, main, vectors, config).extended(new.search_catalog(), new.text_vectors)
        scores = searcher.lexical.scores(word)
        assert len(scores) == len(base) + 1 and not scores[:len(base)].any()
        assert bool(scores[len(base)] > 0) is found, config.lexical_fields
        assert searcher.catalog.descriptions[len(base)] == fields["description"]
        assert searcher.lexical.scores("Quilting")[len(base)] > 0  # the title is indexed either way


def test_a_catalog_rows_description_crosses_the_wire():
    """WriteCatalog's CatalogRow carries the description (field 10): serialised and parsed back, serve's row_of
    hands it to validation like the title and brand; an empty one is left out (the earlier value kept), and a
    retire that carries one is refused."""
    from prefmine.v1 import recommender_pb2 as pb
    from serve.catalog_rpc import row_of

    sent = pb.WriteCatalogRequest(rows=[
        pb.CatalogRow(item_id="wire-1", title="Bird Watching", description="Field guides, Sightings, Optics"),
        pb.CatalogRow(item_id="wire-1", price=4.0),
        pb.CatalogRow(item_id="wire-2", retire=True, description="not on a retire")])
    got = pb.WriteCatalogRequest.FromString(sent.SerializeToString())
    rows = [row_of(r) for r in got.rows]
    assert rows[0] == {"item": "wire-1", "title": "Bird Watching", "description": "Field guides, Sightings, Optics"}
    assert "description" not in rows[1]
    good, bad = validate_rows(rows, known={"wire-1", "wire-2"})
    assert [c.fields for c in good] == [{"title": "Bird Watching", "description": "Field guides, Sightings, Optics"},
                                        {"price": 4.0}]
    assert [e.index for e in bad] == [2] and "description" in bad[0].reason
