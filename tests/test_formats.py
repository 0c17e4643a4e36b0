"""Every input format on real files: RecBole atomic files and the platform event log (both written by the test from
the real Amazon data), reviews-only Amazon categories, the synthetic log, and Ray Data against in-process
preparation."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from prefmine.data.prepare import prepare
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.rows import RawDataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reviews(raw_dir, category) -> list[dict]:
    with gzip.open(raw_dir / "amazon2018" / category / f"{category}_5.json.gz", "rt") as f:
        return [json.loads(line) for line in f]


def _split_map(out, phase) -> dict:
    inter = pd.read_parquet(out / "interactions.parquet")
    part = inter[inter["split"] == phase]
    return dict(zip(part["user"], part["item"]))


def test_recbole_atomic_files_give_the_same_dataset_as_the_amazon_source(raw_dir, tmp_path):
    rows = _reviews(raw_dir, "Gift_Cards")
    rb = tmp_path / "recbole" / "gift"
    rb.mkdir(parents=True)
    with open(rb / "gift.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n")
        for r in rows:
            text = (r.get("reviewText") or "").replace("\t", " ").replace("\n", " ").replace('"', "'")
            f.write(f"{r['reviewerID']}\t{r['asin']}\t{r['overall']}\t{r['unixReviewTime']}\t{text}\n")
    meta = {}
    with gzip.open(raw_dir / "amazon2018/Gift_Cards/meta_Gift_Cards.json.gz", "rt") as f:
        for line in f:
            m = json.loads(line)
            meta.setdefault(m["asin"], m)
    with open(rb / "gift.item", "w") as f:
        f.write("item_id:token\ttitle:token_seq\tbrand:token\n")
        for asin, m in meta.items():
            title = " ".join((m.get("title") or "").split())
            f.write(f"{asin}\t{title}\t{' '.join((m.get('brand') or '').split())}\n")
    users = sorted({r["reviewerID"] for r in rows})
    (rb / "gift.user").write_text("user_id:token\tage:float\n" + "".join(f"{u}\t30\n" for u in users))

    pseudo = Pseudonymiser(b"format-test")
    m_rb = prepare("recbole", tmp_path / "recbole", tmp_path / "from_recbole", pseudonymiser=pseudo)
    m_am = prepare("amazon2018", raw_dir / "amazon2018", tmp_path / "from_amazon", "Gift_Cards",
                   pseudonymiser=pseudo)
    assert m_rb["category"] == "gift"
    assert m_rb["counts"]["interactions"] == m_am["counts"]["interactions"] == 2_972
    assert m_rb["counts"]["items"] == 148 and m_rb["counts"]["reviews"] > 2_900
    for phase in ("test", "valid"):
        assert _split_map(tmp_path / "from_recbole", phase) == _split_map(tmp_path / "from_amazon", phase)
    items = pd.read_parquet(tmp_path / "from_recbole" / "items.parquet")
    assert (items["title"].str.len() > 0).mean() > 0.9
    user_table_bytes = b"".join(p.read_bytes() for p in (tmp_path / "from_recbole").rglob("*") if p.is_file())
    assert not [u for u in users[:200] if u.encode() in user_table_bytes]

    # Without timestamps the file order is the time order; a mistyped header is refused.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "p.inter").write_text("user_id:token\titem_id:token\n" + "".join(
        f"u{u}\ti{(u * 7 + k) % 11}\n" for u in range(4) for k in range(5)))
    prepare("recbole", plain, tmp_path / "plain_out", pseudonymiser=pseudo)
    test = _split_map(tmp_path / "plain_out", "test")
    assert test[pseudo("u1")] == f"i{(7 + 4) % 11}"
    (plain / "p.inter").write_text("user_id:token\titem_id:token\trating:token\nu\ti\t5\n")
    with pytest.raises(RawDataError, match=r"p.inter:1: field 'rating' has type 'token', expected 'float'"):
        prepare("recbole", plain, tmp_path / "plain_out", pseudonymiser=pseudo)


def _events_from_magazine(raw_dir, folder, fmt="csv"):
    """The Magazine ratings CSV and 5-core reviews rewritten as a platform event log with a catalogue."""
    ratings = pd.read_csv(raw_dir / "amazon2018/Magazine_Subscriptions/Magazine_Subscriptions.csv", header=None,
                          names=["item_id", "user_id", "rating", "timestamp"], dtype=str)
    ratings["event_type"] = "rate"
    reviews = pd.DataFrame(_reviews(raw_dir, "Magazine_Subscriptions"))
    text = reviews.set_index(["reviewerID", "asin", "unixReviewTime"])
    key = list(zip(ratings["user_id"], ratings["item_id"], ratings["timestamp"].astype(int)))
    found = text.index.isin(key)
    lookup = text[found][["summary", "reviewText"]]
    lookup = lookup[~lookup.index.duplicated()]
    joined = pd.DataFrame(key, columns=["u", "i", "t"]).merge(
        lookup.reset_index().rename(columns={"reviewerID": "u", "asin": "i", "unixReviewTime": "t"}),
        on=["u", "i", "t"], how="left")
    ratings["review_title"] = joined["summary"].to_numpy()
    ratings["review_text"] = joined["reviewText"].to_numpy()
    ratings = ratings.drop_duplicates(["user_id", "item_id", "timestamp", "event_type"])
    (folder / "events").mkdir(parents=True)
    cols = ["user_id", "item_id", "timestamp", "event_type", "rating", "review_title", "review_text"]
    half = len(ratings) // 2
    for i, part in enumerate((ratings.iloc[:half], ratings.iloc[half:])):
        if fmt == "csv":
            part[cols].to_csv(folder / "events" / f"part-{i}.csv", index=False)
        else:
            part[cols].to_parquet(folder / "events" / f"part-{i}.parquet", index=False)
    return ratings


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_platform_event_log_on_real_magazine_data(raw_dir, tmp_path, fmt):
    log = _events_from_magazine(raw_dir, tmp_path / "raw", fmt)
    m = prepare("events", tmp_path / "raw", tmp_path / "out", pseudonymiser=Pseudonymiser(b"k"))
    assert m["counts"]["interactions"] == len(log) == 89_689 - 1_222
    assert m["counts"]["users"] == log["user_id"].nunique()
    with_text = (log["review_title"].fillna("") != "") | (log["review_text"].fillna("") != "")
    assert m["counts"]["reviews"] == int(with_text.sum()) > 2_000
    assert m["counts"]["items_text_from_reviews"] == m["counts"]["items"]  # no catalogue given
    assert m["bad_rows"]["skipped"] == 0 and m["duplicates"]["policy"] == "bad"


@pytest.mark.parametrize("category,users,items,rows", [("All_Beauty", 991, 85, 5_269),
                                                       ("AMAZON_FASHION", 406, 31, 3_176)])
def test_reviews_only_categories_describe_items_by_their_reviews(raw_dir, tmp_path, category, users, items, rows):
    m = prepare("amazon2018", raw_dir / "amazon2018", tmp_path / "out", category)
    assert (m["counts"]["interactions"], m["counts"]["users"], m["counts"]["items"]) == (rows, users, items)
    table = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert (table["text_source"] == "reviews").all()
    # Text comes from train-period reviews only: every item with one has text, and no held-out review phrase
    # is copied into an item's text (in these small files some items are reviewed only in held-out events).
    reviews = pd.read_parquet(tmp_path / "out" / "reviews.parquet")
    assert len(reviews) == rows and set(reviews["split"]) == {"train", "valid", "test"}
    train_reviewed = set(reviews.loc[(reviews["split"] == "train") & (reviews["summary"] != ""), "item"])
    texts = dict(zip(table["item"], table["text"]))
    assert all(texts[it] for it in train_reviewed) and len(train_reviewed) > 0.6 * items
    assert not any(texts[it] for it in set(table["item"]) - set(reviews.loc[reviews["split"] == "train", "item"]))
    train_phrases = set(reviews.loc[reviews["split"] == "train", "summary"])
    held = reviews[(reviews["split"] != "train") & ~reviews["summary"].isin(train_phrases)]
    assert not [s for s, it in zip(held["summary"], held["item"]) if len(s) > 25 and s in texts[it]]


def test_synthetic_log_through_ray_data_matches_in_process_preparation(tmp_path, ray_session):
    from cluster.prepare_job import ray_data_runner
    from prefmine.data.synth.config import SynthConfig
    from prefmine.data.synth.generate import synth

    info = synth(tmp_path / "raw", SynthConfig(users=3_000, items=800, events=60_000, events_per_part=25_000))
    pseudo = Pseudonymiser(b"k")
    m_ray = prepare("events", tmp_path / "raw", tmp_path / "ray", pseudonymiser=pseudo, runner=ray_data_runner,
                    buckets=3, engine="ray-data")
    m_loc = prepare("events", tmp_path / "raw", tmp_path / "local", pseudonymiser=pseudo, buckets=3)
    assert m_ray["preparation"]["chunks"] == 3 and m_ray["preparation"]["engine"] == "ray-data"
    assert m_ray["data_hash"] == m_loc["data_hash"]
    assert m_ray["counts"]["interactions"] == 60_000
    assert set(m_ray["counts"]["events"]) == {"view", "click", "cart", "buy", "rate"}
    assert m_ray["counts"]["events"] == info["counts"]  # every event of the funnel arrives, none is lost
    assert m_ray["counts"]["users"] == info["active_users"]
    assert m_ray["counts"]["items_text_from_reviews"] == 0  # the catalogue describes every item
    a = pd.read_parquet(tmp_path / "ray" / "interactions.parquet").sort_values(["user", "ts", "item", "event"])
    b = pd.read_parquet(tmp_path / "local" / "interactions.parquet").sort_values(["user", "ts", "item", "event"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert len(list((tmp_path / "ray" / "interactions.parquet").glob("part-*.parquet"))) == 3


def test_prepare_requires_a_key_outside_the_demo(raw_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFMINE_PSEUDONYM_KEY")}
    cmd = [sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "amazon2018", "--raw",
           str(raw_dir / "amazon2018"), "--category", "Gift_Cards", "--local", "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "PREFMINE_PSEUDONYM_KEY" in r.stderr and not (tmp_path / "o").exists()
    r = subprocess.run(cmd + ["--demo-key"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "demo pseudonymisation key" in r.stderr
    from prefmine.data.privacy import DEMO_FINGERPRINT

    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["pseudonymisation"]["key_fingerprint"] == DEMO_FINGERPRINT
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"secret-from-a-file\n")
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "PREFMINE_PSEUDONYM_KEY_FILE": str(keyfile)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["pseudonymisation"]["key_fingerprint"] == Pseudonymiser(b"secret-from-a-file").fingerprint
    blob = b"".join(p.read_bytes() for p in (tmp_path / "o").rglob("*") if p.is_file())
    assert b"secret-from-a-file" not in blob


def test_planted_pii_in_real_reviews_never_reaches_the_dataset(raw_dir, tmp_path):
    src = raw_dir / "amazon2018" / "Gift_Cards"
    dst = tmp_path / "raw" / "Gift_Cards"
    dst.mkdir(parents=True)
    rows = _reviews(raw_dir, "Gift_Cards")
    planted = ["mail me at jane.doe@example.com", "call (555) 123-4567", "see https://evil.example.org/x?id=9",
               "card 4111 1111 1111 1111 works"]
    for i, r in enumerate(rows[:40]):
        r["reviewText"] = f"{r.get('reviewText', '')} {planted[i % 4]}"
    with gzip.open(dst / "Gift_Cards_5.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.symlink(src / "meta_Gift_Cards.json.gz", dst / "meta_Gift_Cards.json.gz")
    m = prepare("amazon2018", tmp_path / "raw", tmp_path / "out", "Gift_Cards")
    reviews = pd.read_parquet(tmp_path / "out" / "reviews.parquet")
    blob = "\n".join(reviews["text"].fillna(""))
    for needle in ("jane.doe@example.com", "123-4567", "evil.example.org", "4111 1111 1111 1111"):
        assert needle not in blob
    assert all(m["pii_scrubbed"].get(k, 0) >= 10 for k in ("email", "phone", "url", "card"))
    assert np.mean(["[email]" in t or "[phone]" in t or "[url]" in t or "[card]" in t
                    for t in reviews["text"].fillna("")]) < 0.05
