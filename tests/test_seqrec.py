"""The `seqrec` source (S3-Rec layout: NAME.txt + optional item2attributes JSON + optional item TSV) and the
transformer_benchmark split, on a set the test writes itself and on the real Beauty, Sports and Yelp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefmine.data.dataset import load_dataset
from prefmine.data.prepare import prepare
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.rows import RawDataError
from prefmine.data.sources import read_rows
from prefmine.data.split import transformer_benchmark, transformer_benchmark_view

ROOT = Path(__file__).resolve().parents[1]

# a set no benchmark ships: its own name, a TSV with a title, attribute names and a column nobody declared
SEQUENCES = ["1 10 11 12 13", "2 11 12 10", "3 12 13 14 15 16", "4 10 17 11"]
TSV = ["item_id\ttitle\tattributes\tsku", "10\tRed Kettle\tKitchen|Acme\tK-1", "11\t\tGarden|Hoses\tG-7",
       "12\tBlue Mug\t\tM-2", "13\tLamp\tHome\tL-3", "14\tDesk\tHome|Office\tD-1", "15\tChair\tOffice\tC-9"]
ATTRS = {"10": [1, 2], "11": [3, 4], "12": [5], "13": [6], "14": [6, 7], "15": [7], "16": [8, 9]}


def write_set(root: Path, name: str = "Shop", sequences=SEQUENCES, tsv=TSV, attrs=ATTRS,
              tsv_name: str = "item_text") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.txt").write_text("".join(line + "\n" for line in sequences))
    if tsv is not None:
        (d / f"{name}_{tsv_name}.tsv").write_text("".join(line + "\n" for line in tsv))
    if attrs is not None:
        (d / f"{name}_item2attributes.json").write_text(json.dumps(attrs))
    return root


def test_any_set_in_the_layout_becomes_a_canonical_dataset(tmp_path):
    raw = write_set(tmp_path / "raw")
    m = prepare("seqrec", raw, tmp_path / "out", "Shop", pseudonymiser=Pseudonymiser(b"k"))
    assert m["time"] == "order-only" and m["category"] == "Shop"
    assert m["counts"]["users"] == 4 and m["counts"]["interactions"] == 15 and m["counts"]["items"] == 8
    assert m["counts"]["split"] == {"train": 7, "valid": 4, "test": 4}

    inter = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert not set(inter["user"]) & {"1", "2", "3", "4"}  # pseudonymised
    pseudo = Pseudonymiser(b"k")
    for line in SEQUENCES:
        user, *items = line.split()
        rows = inter[inter["user"] == pseudo(user)].sort_values("ts")
        assert rows["item"].tolist() == items  # ids kept as strings, file order = time order
        assert rows["ts"].tolist() == list(range(1, len(items) + 1))
        assert rows["split"].tolist()[-2:] == ["valid", "test"]

    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item")
    assert items.loc["10", "text"] == "Red Kettle . Kitchen, Acme"
    assert items.loc["11", "text"] == "Garden, Hoses"  # no title: text from the attribute names
    assert items.loc["12", "text"] == "Blue Mug"
    assert list(items.loc["11", "attribute_names"]) == ["Garden", "Hoses"]
    assert list(items.loc["14", "attributes"]) == ["6", "7"]
    assert items.loc["15", "sku"] == "C-9"  # an undeclared TSV column stays as a side column
    # item 16 is in neither the TSV's text nor names: no text, but its attribute ids are kept
    assert items.loc["16", "text"] == "" and list(items.loc["16", "attributes"]) == ["8", "9"]

    ds = load_dataset(tmp_path / "out")
    u = list(ds.users).index(pseudo("3"))
    assert [ds.item_ids[i] for i in ds.history(u, "test")] == ["12", "13", "14", "15"]
    assert ds.item_ids[ds.test_item[u]] == "16"


def test_sequences_only_and_order_kept_without_side_files(tmp_path):
    raw = write_set(tmp_path / "raw", name="Bare", tsv=None, attrs=None)
    m = prepare("seqrec", raw, tmp_path / "out", None, pseudonymiser=Pseudonymiser(b"k"))  # the only set found
    assert m["category"] == "Bare" and m["counts"]["interactions"] == 15
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert set(items["item"]) == {str(i) for i in range(10, 18)}


BAD_LINES = [("5 20 x 21", "not_an_integer", "item_id"), ("", "empty_line", None),
             ("2 30 31", "duplicate_user", "user_id"), ("u7 20 21", "not_an_integer", "user_id"),
             ("9", "no_items", "item_id")]


@pytest.mark.parametrize("line,reason,field", BAD_LINES)
def test_a_bad_sequence_line_names_file_line_and_field_or_is_skipped_alone(tmp_path, line, reason, field):
    sequences = SEQUENCES[:2] + [line] + SEQUENCES[2:]
    raw = write_set(tmp_path / "raw", sequences=sequences)
    txt = raw / "Shop" / "Shop.txt"
    with pytest.raises(RawDataError) as e:
        prepare("seqrec", raw, tmp_path / "o1", "Shop", pseudonymiser=Pseudonymiser(b"k"))
    assert f"{txt}:3" in str(e.value) and (field is None or f"'{field}'" in str(e.value))
    assert not (tmp_path / "o1").exists()
    m = prepare("seqrec", raw, tmp_path / "o2", "Shop", pseudonymiser=Pseudonymiser(b"k"), on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {reason: 1} and f"{txt}:3" in m["bad_rows"]["examples"][0]
    assert m["counts"]["interactions"] == 15 and m["counts"]["users"] == 4  # every good line kept
    if reason == "duplicate_user":  # the first line of user 2 is the one kept
        inter = pd.read_parquet(tmp_path / "o2" / "interactions.parquet")
        assert "30" not in set(inter["item"])


@pytest.mark.parametrize("row,reason", [("12\tBroken row", "bad_tsv_row"), ("x1\tT\tA\tS", "bad_tsv_row"),
                                        ("10\tAgain\tA\tS", "duplicate_item")])
def test_a_broken_tsv_row_is_named_or_skipped_alone(tmp_path, row, reason):
    tsv = TSV[:3] + [row] + TSV[3:]
    raw = write_set(tmp_path / "raw", tsv=tsv, tsv_name="item_asin")
    path = raw / "Shop" / "Shop_item_asin.tsv"
    with pytest.raises(RawDataError, match=f"{path}:4"):
        prepare("seqrec", raw, tmp_path / "o1", "Shop", pseudonymiser=Pseudonymiser(b"k"))
    m = prepare("seqrec", raw, tmp_path / "o2", "Shop", pseudonymiser=Pseudonymiser(b"k"), on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {reason: 1}
    items = pd.read_parquet(tmp_path / "o2" / "items.parquet").set_index("item")
    assert items.loc["10", "title"] == "Red Kettle" and items.loc["15", "title"] == "Chair"  # the rest kept


def test_a_bad_attribute_entry_is_named_by_its_key_or_skipped(tmp_path):
    raw = write_set(tmp_path / "raw", attrs={**ATTRS, "13": ["six"]})
    with pytest.raises(RawDataError, match="key '13'.*'attributes'"):
        prepare("seqrec", raw, tmp_path / "o1", "Shop", pseudonymiser=Pseudonymiser(b"k"))
    m = prepare("seqrec", raw, tmp_path / "o2", "Shop", pseudonymiser=Pseudonymiser(b"k"), on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"bad_attribute": 1}
    items = pd.read_parquet(tmp_path / "o2" / "items.parquet").set_index("item")
    assert list(items.loc["13", "attributes"]) == [] and list(items.loc["14", "attributes"]) == ["6", "7"]


def test_cli_finds_the_set_under_the_data_dir(tmp_path):
    write_set(tmp_path / "data" / "seqrec")
    env = {**os.environ, "PREFMINE_DATA_DIR": str(tmp_path / "data"), "PREFMINE_PSEUDONYM_KEY": "seqrec-test-key-0123"}
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "seqrec", "--category",
                        "Shop", "--local", "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["interactions"] == 15
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "seqrec", "--category",
                        "Nope", "--local", "--out", str(tmp_path / "o2")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "Nope.txt" in r.stderr


def test_transformer_benchmark_drops_cold_users_items_and_seen_targets():
    inter = pd.DataFrame({"user": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"],
                          "item": ["1", "2", "3", "2", "3", "9", "1", "3", "1", "4"],
                          "ts": [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]})
    b = transformer_benchmark(inter)
    assert b.split.tolist() == ["train", "valid", "test"] * 3 + ["test"]
    # a: 3 seen in training (by b, c) -> kept; b: 9 never in training -> cold; c: 1 already in c's history;
    # d: no training row (cold user), and 4 is cold
    assert b.test_kept.tolist() == [False, False, True] + [False] * 7
    assert b.catalogue.tolist() == ["1", "2", "3"]


def rectools_style_split(df: pd.DataFrame) -> tuple[int, int, int]:
    """transformer_benchmark's own steps, rewritten independently: `LastNSplitter(n=1)` ranks each user's rows by
    time with method "first", then RecTools' Splitter drops test rows of cold users, cold items and already seen
    pairs. Returns (train rows, kept test rows, catalogue size)."""
    df = df.astype({"user": int, "item": int})  # as their s3_repro reader does
    rank = df.groupby("user")["ts"].rank(method="first").astype(int)
    inv = df.groupby("user")["user"].transform("size") - rank + 1
    train, test = df[inv > 1], df[inv == 1]
    test = test[test["user"].isin(train["user"]) & test["item"].isin(train["item"])]
    seen = test.merge(train[["user", "item"]].drop_duplicates(), on=["user", "item"], how="left", indicator=True)
    return len(train), int((seen["_merge"] == "left_only").sum()), train["item"].nunique()


@pytest.fixture(scope="module")
def seqrec_raw() -> Path:
    root = Path(os.environ.get("PREFMINE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve() / "seqrec"
    if not (root / "Beauty" / "Beauty.txt").is_file():
        pytest.fail(f"seqrec data not found at {root}: set PREFMINE_DATA_DIR")
    return root


# users, items, interactions from the data README; kept test users, catalogue and training rows from
# transformer_benchmark's data/s3_*/statistics.csv and README (Yelp: no published figure, both implementations agree)
REAL = {"Beauty": (22363, 12101, 198502, 22311, 12092, 176139),
        "Sports_and_Outdoors": (35598, 18357, 296337, 35539, 18347, 260739),
        "Yelp": (30431, 20033, 316354, None, None, 285923)}


@pytest.mark.parametrize("name", list(REAL))
def test_real_sets_split_exactly_as_transformer_benchmark(seqrec_raw, name):
    users, items, rows, kept, catalogue, train = REAL[name]
    df = read_rows("seqrec", seqrec_raw, name)
    assert (df["user"].nunique(), df["item"].nunique(), len(df)) == (users, items, rows)
    b = transformer_benchmark(df)
    assert int((b.split != "test").sum()) == train and int((b.split == "test").sum()) == users
    assert (int((b.split != "test").sum()), b.kept_users, len(b.catalogue)) == rectools_style_split(df)
    assert sorted(b.catalogue.astype(int)) == sorted(df.loc[(b.split != "test").to_numpy(), "item"].astype(int).unique())
    if kept is not None:
        assert (b.kept_users, len(b.catalogue)) == (kept, catalogue)


@pytest.mark.parametrize("name", list(REAL))
def test_real_sets_prepare_with_text_and_attributes(seqrec_raw, tmp_path, name):
    users, items, rows = REAL[name][:3]
    t0 = time.perf_counter()
    m = prepare("seqrec", seqrec_raw, tmp_path / name, name, pseudonymiser=Pseudonymiser(b"k"))
    seconds = time.perf_counter() - t0
    print(f"prepare {name}: {seconds:.1f} s")
    assert (m["counts"]["users"], m["counts"]["items"], m["counts"]["interactions"]) == (users, items, rows)
    assert m["bad_rows"]["skipped"] == 0 and m["time"] == "order-only"
    # the protocol on the prepared dataset: the same kept (user, target) pairs and catalogue as on the raw files
    ds = load_dataset(tmp_path / name)
    view = transformer_benchmark_view(ds)
    pseudo = Pseudonymiser(b"k")
    raw = read_rows("seqrec", seqrec_raw, name)
    b = transformer_benchmark(raw)
    kept = raw[b.test_kept]
    names = {user: pseudo(user) for user in kept["user"].unique()}
    assert sorted(zip(kept["user"].map(names), kept["item"])) == sorted(
        (view.users[u], view.item_ids[view.test_item[u]]) for u in view.eval_users("test"))
    assert sorted(view.item_ids) == sorted(b.catalogue) and view.n_items == len(b.catalogue)
    assert len(view.eval_users("valid")) == users
    u = int(view.eval_users("test")[0])
    assert [view.item_ids[i] for i in view.history(u, "test")] == [ds.item_ids[i] for i in ds.history(u, "test")]
    table = pd.read_parquet(tmp_path / name / "items.parquet")
    assert table["attributes"].map(len).gt(0).mean() > 0.99
    if name == "Beauty":
        assert (table["title"] != "").sum() == items - 7  # 7 empty titles in the TSV
        assert (table["text"] != "").all()  # those 7 are described by their attribute names
        assert table.set_index("item").loc["1", "text"].startswith("OPI Nail Lacquer")
    elif name == "Yelp":
        assert (table["title"] == "").all() and table["attribute_names"].map(len).gt(0).mean() > 0.99
        assert "Restaurants" in table.set_index("item").loc["1", "text"]
    else:  # Sports: attribute names unknown, ids are the side feature; ASINs kept to join metadata later
        assert (table["text"] == "").all() and table["attribute_names"].map(len).eq(0).all()
        assert table["asin"].str.len().gt(0).all()
        assert np.unique(np.concatenate(table["attributes"].to_numpy())).size > 2000


def test_a_line_over_the_record_cap_costs_only_itself(tmp_path):
    """The sequence file is read with the readers' line blocks, so their 1 MiB record cap applies: an absurd line
    is skipped and named by its line, and every other sequence, before and after it, is kept."""
    huge = "5 " + " ".join(["10"] * 600_000)  # about 1.8 MB
    raw = write_set(tmp_path / "raw", sequences=SEQUENCES[:2] + [huge] + SEQUENCES[2:])
    m = prepare("seqrec", raw, tmp_path / "o", "Shop", pseudonymiser=Pseudonymiser(b"k"), on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"record_too_large": 1}
    assert m["counts"]["users"] == 4 and m["counts"]["interactions"] == 15
