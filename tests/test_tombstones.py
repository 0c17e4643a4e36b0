"""The tombstone list of erased pseudonyms: the file itself, its watcher, and the readers that must honour it
(`prepare` from raw files and `load_dataset` for training)."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter

import pandas as pd
import pytest

from prefmine.data.dataset import load_dataset
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.tombstones import (
    TombstoneError,
    TombstoneList,
    TombstoneWatcher,
    default_location,
    resolve,
)

A, B, C = "a" * 32, "0123456789abcdef" * 2, "f" * 32


def test_list_adds_once_and_reloads(tmp_path):
    path = tmp_path / "sub" / "erased.tombstones"
    tl = TombstoneList(path)
    assert tl.load() == frozenset() and not tl.contains(A)
    assert tl.add([A, B, A]) == 2
    assert tl.add([B]) == 0 and tl.add([C]) == 1
    assert path.read_text() == f"{A}\n{B}\n{C}\n"  # append-only, one a line
    assert TombstoneList(path).load() == {A, B, C} and TombstoneList(path).contains(B)
    assert sorted(p.name for p in path.parent.iterdir()) == ["erased.tombstones"]  # no temp file left behind


def test_list_rejects_bad_pseudonyms_and_names_the_line(tmp_path):
    path = tmp_path / "t"
    with pytest.raises(TombstoneError, match="pseudonym"):
        TombstoneList(path).add(["raw-user-id"])  # a raw id must never be written here
    assert not path.exists()
    path.write_text(f"{A}\n\nnot-a-pseudonym\n")
    with pytest.raises(TombstoneError, match=r"t, line 3: pseudonym"):
        TombstoneList(path).load()


def test_watcher_sees_a_change_within_its_interval_and_keeps_erasures(tmp_path):
    path = tmp_path / "t"
    w = TombstoneWatcher(path, interval_s=0.2)
    assert A not in w and len(w) == 0
    TombstoneList(path).add([A])
    t0 = time.monotonic()
    while A not in w:
        assert time.monotonic() - t0 < 5, "the watcher did not pick up the new tombstone"
        time.sleep(0.05)
    path.write_text("garbage\n")  # a broken file does not undo an erasure
    time.sleep(0.25)
    assert A in w
    os.unlink(path)
    time.sleep(0.25)
    assert A in w
    assert A not in TombstoneWatcher(None)  # no list: nobody is erased


def test_default_location_is_beside_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFMINE_TOMBSTONES", raising=False)
    assert default_location(tmp_path / "feedback.sqlite") == tmp_path / "feedback.sqlite.tombstones"
    assert default_location("postgresql://u@h/db") == "postgresql://u@h/db"  # the table in the store's database
    assert default_location() is None
    assert resolve("postgresql://u@h/other", tmp_path / "feedback.sqlite") == "postgresql://u@h/other"
    assert resolve(tmp_path / "x", tmp_path / "feedback.sqlite") == tmp_path / "x"
    monkeypatch.setenv("PREFMINE_TOMBSTONES", str(tmp_path / "env"))
    assert default_location(tmp_path / "feedback.sqlite") == tmp_path / "env"


def _two_people(raw_dir):
    with gzip.open(raw_dir / "amazon2018/Magazine_Subscriptions/Magazine_Subscriptions_5.json.gz", "rt") as f:
        per_user = Counter(json.loads(line)["reviewerID"] for line in f)
    return per_user.most_common(2)


def test_prepare_and_load_dataset_drop_tombstoned_people(raw_dir, magazine5, tmp_path, monkeypatch):
    from prefmine.data.prepare import prepare

    monkeypatch.delenv("PREFMINE_TOMBSTONES", raising=False)
    (p1, n1), (p2, n2) = _two_people(raw_dir)
    pseudo = Pseudonymiser()
    tomb = tmp_path / "erased.tombstones"
    TombstoneList(tomb).add([pseudo(p1), pseudo(p2), C])  # C: erased, but not in these raw files

    raw = tmp_path / "raw" / "Magazine_Subscriptions"
    raw.mkdir(parents=True)
    for name in ("Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz"):
        os.symlink(raw_dir / "amazon2018" / "Magazine_Subscriptions" / name, raw / name)
    out = tmp_path / "prepared"
    m = prepare("amazon2018", raw.parent, out, "Magazine_Subscriptions", tombstones=tomb)
    full = json.loads((magazine5 / "manifest.json").read_text())
    # every raw row of theirs (one review line: their rating and their review) was dropped and counted
    assert m["tombstoned"] == {"list": str(tomb), "pseudonyms": 3, "rows_dropped": n1 + n2}
    assert m["counts"]["interactions"] == full["counts"]["interactions"] - n1 - n2
    assert m["counts"]["users"] == full["counts"]["users"] - 2
    users = set(pd.read_parquet(out / "interactions.parquet")["user"]) | set(
        pd.read_parquet(out / "reviews.parquet")["user"])
    assert not users & {pseudo(p1), pseudo(p2)}

    # a training job reading a copy made before the erasure drops them too; others are untouched
    before = load_dataset(magazine5, with_reviews=True)
    after = load_dataset(magazine5, with_reviews=True, tombstones=tomb)
    assert after.n_users == before.n_users - 2
    assert not set(after.users) & {pseudo(p1), pseudo(p2)}
    assert not set(after.reviews["user"]) & {pseudo(p1), pseudo(p2)}
    assert sum(map(len, after.train_seqs)) == sum(map(len, before.train_seqs)) - (n1 - 2) - (n2 - 2)
    monkeypatch.setenv("PREFMINE_TOMBSTONES", str(tomb))  # what every training job reads by default
    assert load_dataset(magazine5).n_users == before.n_users - 2


def test_postgres_list_is_shared_by_replicas_and_survives_a_server_restart(postgres_server, tmp_path):
    """Beside a PostgreSQL feedback store the list is a table of its database: `forget` writes it there by default
    (no file), two watchers (two ingress replicas, possibly on two nodes) see a new erasure within their interval,
    a malformed pseudonym is refused by name, a committed erasure survives an immediate stop of the server, and a
    watcher whose database is away keeps the erasures it knew."""
    from prefmine.data.tombstones import PostgresTombstoneList, open_list

    dsn = postgres_server.new_database()
    where = resolve(None, dsn)
    assert where == dsn and isinstance(open_list(where), PostgresTombstoneList)
    replicas = [TombstoneWatcher(where, interval_s=0.2) for _ in range(2)]
    assert all(A not in w and len(w) == 0 for w in replicas)
    lst = open_list(where)
    assert lst.add([A, B, A]) == 2 and lst.add([B, C]) == 1
    t0 = time.monotonic()
    while not all(A in w and C in w for w in replicas):
        assert time.monotonic() - t0 < 5, "a replica did not see the new tombstones"
        time.sleep(0.05)
    with pytest.raises(TombstoneError, match="pseudonym"):
        lst.add(["raw-user-id"])
    assert lst.load() == {A, B, C}
    lst.close()
    postgres_server.stop("immediate")  # no checkpoint: the committed rows must come back from the WAL
    try:
        time.sleep(0.3)
        assert all(A in w and C in w for w in replicas)  # database away: the last list stays
        assert replicas[0].refresh(force=True) is not None  # and the error is reported
    finally:
        postgres_server.start()
    assert open_list(where).load() == {A, B, C}
    assert open_list(where).contains(B) and not open_list(where).contains("0" * 32)
