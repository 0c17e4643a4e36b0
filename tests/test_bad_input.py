"""Every kind of bad raw input: a clear error naming file, line and field, the previous good dataset intact and
nothing half-written; with `--on-bad-rows skip` the bad rows are dropped and counted in the manifest."""

from __future__ import annotations

import gzip
import json
import time

import pandas as pd
import pytest

from prefmine.data.prepare import prepare
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.rows import RawDataError

PSEUDO = Pseudonymiser(b"bad-input-test")
HEADER = "user_id,item_id,timestamp,event_type,rating,review_text\n"
NOW = int(time.time())


def _good_rows(n_users=6, per_user=5) -> list[str]:
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            ev = "rate" if k == per_user - 1 else "view"
            rating = "4" if ev == "rate" else ""
            rows.append(f"u{u},i{(u + k) % 9},{1_500_000_000 + 1000 * u + 10 * k},{ev},{rating},nice item {k}\n")
    return rows


def _write_log(folder, body: bytes, name="events.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(body)


@pytest.fixture()
def good_dataset(tmp_path):
    raw = tmp_path / "good_raw"
    _write_log(raw, (HEADER + "".join(_good_rows())).encode())
    out = tmp_path / "data"
    prepare("events", raw, out, pseudonymiser=PSEUDO)
    return out


# (case id, file body, error pattern, skip reason, rows skipped)
ROWS = _good_rows()
CASES = [
    ("invalid_utf8", (HEADER + "".join(ROWS[:3])).encode() + b"u9,i1,1500000000,view,,caf\xe9 \xff\n"
     + "".join(ROWS[3:]).encode(), r"events.csv:5: field 'review_text': bytes that are not valid UTF-8", "not_utf8", 1),
    ("future_timestamp", (HEADER + "".join(ROWS) + f"u1,i2,{NOW + 10 * 86400},view,,\n").encode(),
     r"events.csv:32: field 'timestamp': timestamp in the future", "timestamp_in_future", 1),
    ("before_1990", (HEADER + "u1,i2,600000000,view,,\n" + "".join(ROWS)).encode(),
     r"events.csv:2: field 'timestamp': timestamp before 1990-01-01", "timestamp_before_1990", 1),
    ("rating_out_of_range", (HEADER + "".join(ROWS[:10]) + "u1,i3,1500000001,rate,7,\n" + "".join(ROWS[10:])).encode(),
     r"events.csv:12: field 'rating': outside the declared range \[1, 5\]", "rating_out_of_range", 1),
    ("not_a_number", (HEADER + "".join(ROWS) + "u2,i3,yesterday,view,,\n").encode(),
     r"events.csv:32: field 'timestamp': missing or not a Unix timestamp", "bad_timestamp", 1),
    ("unknown_event", (HEADER + "".join(ROWS) + "u2,i3,1500000001,wishlist,,\n").encode(),
     r"events.csv:32: field 'event_type': unknown event type", "unknown_event", 1),
    ("duplicate_event", (HEADER + "".join(ROWS) + ROWS[7]).encode(),
     r"events.csv:32: duplicate event: same user, item, timestamp and event as .*events.csv:9", "duplicate_event", 1),
    ("missing_id", (HEADER + "".join(ROWS) + ",i3,1500000001,view,,\n").encode(),
     r"events.csv:32: field 'user_id': empty or missing id", "missing_user", 1),
]


@pytest.mark.parametrize("case,body,pattern,reason,skipped", CASES, ids=[c[0] for c in CASES])
def test_bad_row_is_named_then_skipped_and_counted(tmp_path, good_dataset, case, body, pattern, reason, skipped):
    before = (good_dataset / "manifest.json").read_text()
    raw = tmp_path / "bad_raw"
    _write_log(raw, body)
    with pytest.raises(RawDataError, match=pattern):
        prepare("events", raw, good_dataset, pseudonymiser=PSEUDO)
    assert (good_dataset / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    m = prepare("events", raw, tmp_path / "skipped", pseudonymiser=PSEUDO, on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {reason: skipped}
    assert m["bad_rows"]["skipped"] == skipped and m["bad_rows"]["examples"]
    assert m["counts"]["interactions"] == len(ROWS)


def test_wrong_or_missing_columns_always_fail(tmp_path, good_dataset):
    before = (good_dataset / "manifest.json").read_text()
    raw = tmp_path / "raw"
    _write_log(raw, b"user,item_id,timestamp,event_type\nu1,i1,1500000000,view\n")
    for mode in ("error", "skip"):
        with pytest.raises(RawDataError, match=r"events.csv:1: missing column\(s\) \['user_id'\]"):
            prepare("events", raw, good_dataset, pseudonymiser=PSEUDO, on_bad_rows=mode)
    pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"]}).to_parquet(raw / "events.parquet")
    (raw / "events.csv").unlink()
    with pytest.raises(RawDataError, match=r"events.parquet: missing column\(s\) \['timestamp'\]"):
        prepare("events", raw, good_dataset, pseudonymiser=PSEUDO)
    assert (good_dataset / "manifest.json").read_text() == before


def test_empty_file(tmp_path, good_dataset):
    before = (good_dataset / "manifest.json").read_text()
    raw = tmp_path / "raw" / "events"
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text(HEADER + "".join(ROWS))
    (raw / "b.csv").write_bytes(b"")
    with pytest.raises(RawDataError, match=r"events/b.csv: empty file"):
        prepare("events", raw.parent, good_dataset, pseudonymiser=PSEUDO)
    assert (good_dataset / "manifest.json").read_text() == before
    m = prepare("events", raw.parent, tmp_path / "out", pseudonymiser=PSEUDO, on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"empty_file": 1} and m["counts"]["interactions"] == len(ROWS)
    (raw / "a.csv").write_text(HEADER)  # header only, and nothing else: nothing to prepare at all
    with pytest.raises(RawDataError, match=r"no interactions left"):
        prepare("events", raw.parent, tmp_path / "out2", pseudonymiser=PSEUDO, on_bad_rows="skip")
    assert not (tmp_path / "out2").exists()


def _review_line(i: int) -> str:
    return json.dumps({"reviewerID": f"u{i % 7}", "asin": f"i{i % 5}", "overall": 4.0,
                       "unixReviewTime": 1_400_000_000 + i, "summary": "ok", "reviewText": f"fine {i}"}) + "\n"


def test_truncated_gzip_and_invalid_json_lines(tmp_path, good_dataset, raw_dir):
    before = (good_dataset / "manifest.json").read_text()
    folder = tmp_path / "raw" / "Gift_Cards"
    folder.mkdir(parents=True)
    full = gzip.compress("".join(_review_line(i) for i in range(3000)).encode())
    (folder / "Gift_Cards_5.json.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(RawDataError, match=r"Gift_Cards_5.json.gz:\d+: gzip stream ends or breaks here; the file "
                                           r"is truncated"):
        prepare("amazon2018", tmp_path / "raw", good_dataset, "Gift_Cards", pseudonymiser=PSEUDO)
    assert (good_dataset / "manifest.json").read_text() == before
    m = prepare("amazon2018", tmp_path / "raw", tmp_path / "out", "Gift_Cards", pseudonymiser=PSEUDO,
                on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"truncated_file": 1}
    assert 0 < m["counts"]["interactions"] < 3000  # the rows before the break are kept

    lines = [_review_line(i) for i in range(30)]
    lines[11] = '{"reviewerID": "u1", "asin": "i1", "overall": 4.0, "unixRev\n'
    lines[20] = json.dumps({"reviewerID": "u2", "asin": "i2", "overall": 5.0}) + "\n"
    (folder / "Gift_Cards_5.json.gz").write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(RawDataError, match=r"Gift_Cards_5.json.gz:12: invalid JSON"):
        prepare("amazon2018", tmp_path / "raw", good_dataset, "Gift_Cards", pseudonymiser=PSEUDO)
    m = prepare("amazon2018", tmp_path / "raw", tmp_path / "out", "Gift_Cards", pseudonymiser=PSEUDO,
                on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"invalid_json": 1, "missing_unixReviewTime": 1}
    assert m["counts"]["interactions"] == 28
    assert (good_dataset / "manifest.json").read_text() == before


def test_truncated_gzip_csv_event_log(tmp_path, good_dataset):
    raw = tmp_path / "raw" / "events"
    raw.mkdir(parents=True)
    body = (HEADER + "".join(_good_rows(n_users=40_000, per_user=5))).encode()
    packed = gzip.compress(body)
    (raw / "part.csv.gz").write_bytes(packed[: int(len(packed) * 0.6)])
    with pytest.raises(RawDataError, match=r"part.csv.gz:\d+: .*truncated"):
        prepare("events", raw.parent, good_dataset, pseudonymiser=PSEUDO)
    m = prepare("events", raw.parent, tmp_path / "out", pseudonymiser=PSEUDO, on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"truncated_file": 1}
    assert 0 < m["counts"]["interactions"] < 200_000  # whole blocks before the break are kept
