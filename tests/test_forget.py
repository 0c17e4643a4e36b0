"""`prefmine data forget` end to end: one person leaves the dataset and the serving feedback log, other people's
rows stay, the manifest records the erasure without the id, and a bundle trained before is marked."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd

from prefmine.data.dataset import load_dataset
from prefmine.data.privacy import Pseudonymiser
from prefmine.feedback import FeedbackEvent, FeedbackLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefmine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_forget_erases_one_person_everywhere(raw_dir, magazine5, tiny_bundle, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(magazine5, data)
    bundle = tmp_path / "bundles" / "v1"
    shutil.copytree(tiny_bundle, bundle)
    with gzip.open(raw_dir / "amazon2018/Magazine_Subscriptions/Magazine_Subscriptions_5.json.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    per_user = Counter(r["reviewerID"] for r in rows)
    person, other = per_user.most_common(2)[0][0], per_user.most_common(2)[1][0]
    pseudo = Pseudonymiser()  # the key the fixtures prepared with (PREFMINE_PSEUDONYM_KEY)
    me, them = pseudo(person), pseudo(other)

    log = FeedbackLog(tmp_path / "feedback.sqlite")
    log.append([FeedbackEvent(me, "B00005N7P0", "click", 1_700_000_000), FeedbackEvent(them, "B00005N7P0", "view",
                                                                                       1_700_000_001),
                FeedbackEvent(me, "B00005N7P0", "buy", 1_700_000_002)])
    log.close()
    before = json.loads((data / "manifest.json").read_text())
    inter_before = pd.read_parquet(data / "interactions.parquet")

    r = _cli("data", "forget", "--data", str(data), "--user", person, "--feedback", str(tmp_path / "feedback.sqlite"),
             "--bundle", str(tmp_path / "bundles"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rows_removed"] == {"interactions": per_user[person], "reviews": per_user[person], "feedback": 2}
    assert report["bundles_marked"] == [str(bundle)]

    inter = pd.read_parquet(data / "interactions.parquet")
    reviews = pd.read_parquet(data / "reviews.parquet")
    assert me not in set(inter["user"]) and me not in set(reviews["user"])
    assert len(inter) == len(inter_before) - per_user[person]
    assert (inter["user"] == them).sum() == per_user[other]
    after = json.loads((data / "manifest.json").read_text())
    assert after["counts"]["interactions"] == before["counts"]["interactions"] - per_user[person]
    assert after["counts"]["users"] == before["counts"]["users"] - 1
    assert after["counts"]["evaluated_users"] == before["counts"]["evaluated_users"] - 1
    assert after["data_hash"] != before["data_hash"]
    assert len(after["erasures"]) == 1 and after["erasures"][0]["data_hash_before"] == before["data_hash"]
    blob = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert person.encode() not in blob and me.encode() not in blob
    ds = load_dataset(data)  # still a valid dataset
    assert ds.n_users == before["counts"]["users"] - 1

    log = FeedbackLog(tmp_path / "feedback.sqlite", create=False)
    assert log.count(me) == 0 and log.count(them) == 1
    log.close()
    assert me.encode() not in (tmp_path / "feedback.sqlite").read_bytes()

    marked = json.loads((bundle / "manifest.json").read_text())
    assert marked["erasures"][0]["id"] == after["erasures"][0]["id"]
    assert "erasures" not in json.loads((tiny_bundle / "manifest.json").read_text())

    again = _cli("data", "forget", "--data", str(data), "--user", person)
    assert again.returncode == 0 and json.loads(again.stdout)["rows_removed"] == {"interactions": 0, "reviews": 0}

    wrong_key = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "forget", "--data", str(data), "--user",
                                other], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PREFMINE_PSEUDONYM_KEY": "another-key-0123456789"})
    assert wrong_key.returncode == 2 and "differs from the key" in wrong_key.stderr
    assert (pd.read_parquet(data / "interactions.parquet")["user"] == them).sum() == per_user[other]


def test_forget_reads_ids_from_stdin_and_tombstones_feedback_only_people(raw_dir, magazine5, tmp_path, monkeypatch):
    """Ids on stdin (never in argv), several at once; a person known only from feedback is tombstoned and erased
    from the feedback log; the tombstone file sits beside the SQLite store and holds pseudonyms only."""
    monkeypatch.delenv("PREFMINE_TOMBSTONES", raising=False)
    data = tmp_path / "data"
    shutil.copytree(magazine5, data)
    with gzip.open(raw_dir / "amazon2018/Magazine_Subscriptions/Magazine_Subscriptions_5.json.gz", "rt") as f:
        per_user = Counter(json.loads(line)["reviewerID"] for line in f)
    person, n = per_user.most_common(1)[0]
    only_feedback = "shopper-seen-only-online-42"
    pseudo = Pseudonymiser()
    fb = tmp_path / "feedback.sqlite"
    log = FeedbackLog(fb)
    log.append([FeedbackEvent(pseudo(only_feedback), "B00005N7P0", "click", 1_700_000_000),
                FeedbackEvent(pseudo(person), "B00005N7P0", "view", 1_700_000_001)])
    log.close()

    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "forget", "--data", str(data), "--user", "-",
                        "--feedback", str(fb)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       input=f"{person}\r\n\n{only_feedback}\n")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    tomb = tmp_path / "feedback.sqlite.tombstones"
    assert report["tombstones"] == str(tomb)
    assert [p["rows_removed"] for p in report["people"]] == [
        {"interactions": n, "reviews": n, "feedback": 1}, {"interactions": 0, "reviews": 0, "feedback": 1}]
    assert tomb.read_text().split() == [pseudo(person), pseudo(only_feedback)]
    assert person.encode() not in tomb.read_bytes() and only_feedback.encode() not in tomb.read_bytes()
    log = FeedbackLog(fb, create=False)
    assert log.count() == 0
    log.close()

    ids = tmp_path / "ids.txt"
    ids.write_text(f"{only_feedback}\n")
    again = _cli("data", "forget", "--data", str(data), "--user-file", str(ids), "--tombstones", str(tomb))
    assert again.returncode == 0, again.stderr
    assert tomb.read_text().split() == [pseudo(person), pseudo(only_feedback)]  # listed once

    untombed = _cli("data", "forget", "--data", str(data), "--user", only_feedback)
    assert untombed.returncode == 0 and "no tombstone list" in untombed.stderr
    none = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "forget", "--data", str(data), "--user", "-"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, input="\n")
    assert none.returncode == 2 and "--user" in none.stderr
