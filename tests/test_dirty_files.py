"""Dirty raw files, one case each (issue 23, item 6): a bad record costs that record only, is counted and named by
its real line, and every good row before and after it is kept. Each case failed on the readers before the fix
(kept 0 or 100 rows, a wrong line, a KeyError, a RecursionError, a NaN rating let through)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from prefmine.data.prepare import prepare
from prefmine.data.privacy import (
    DEMO_FINGERPRINT,
    MIN_KEY_BYTES,
    Pseudonymiser,
    WeakKeyError,
    load_key,
    normalise_id,
)
from prefmine.data.readers.blocks import ReadLimits
from prefmine.data.readers.delimited import read_delimited
from prefmine.data.rows import BadRows, RawDataError, check_rows
from prefmine.data.sources import amazon, events

ROOT = Path(__file__).resolve().parents[1]
PSEUDO = Pseudonymiser(b"dirty-files-test-key")
HEADER = "user_id,item_id,timestamp,event_type,rating,review_text\n"


def _rows(a: int, b: int) -> str:
    return "".join(f"u{i % 97},i{i % 31},{1_500_000_000 + i},view,,t{i}\n" for i in range(a, b))


def _read_events(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[pd.DataFrame, BadRows]:
    """The events source's reader and row checks, in skip mode, keeping every bad row's place."""
    bad = BadRows("skip", keep_all=True)
    chunk = {"path": str(path), "names": events.NAMES}
    frames = [check_rows(df, path, events.rules(), bad, events.NAMES)
              for df in events.read_chunk(chunk, bad, limits)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["_line"]), bad


def _write(tmp_path, body: bytes, name="events.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    return p


def _lines(bad: BadRows) -> list[int]:
    return sorted(int(w.rsplit(":", 1)[1]) for w, _ in bad.where)


def test_one_ragged_row_among_100_000_costs_that_row_only(tmp_path):
    p = _write(tmp_path, (HEADER + _rows(0, 100) + "u1,i1,1500000000\n" + _rows(100, 100_100)).encode())
    df, bad = _read_events(p)
    assert len(df) == 100_100 and dict(bad.counts) == {"wrong_field_count": 1} and _lines(bad) == [102]
    assert df["_line"].tolist() == list(range(2, 102)) + list(range(103, 100_103))
    assert "events.csv:102: expected 6 fields (the header's), found 3" in bad.examples[0]


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_a_line_over_the_record_cap_and_an_unbalanced_quote_lose_one_row_each(tmp_path, name):
    body = (HEADER + _rows(0, 100) + "u1,i1,1500000000,view,," + "x" * (3 << 20) + "\n" + _rows(100, 50_000)
            + 'u2,i2,1500000001,view,,"never closed\n' + _rows(50_000, 100_000)).encode()
    df, bad = _read_events(_write(tmp_path, body, name))
    assert dict(bad.counts) == {"record_too_large": 1, "unbalanced_quote": 1}
    assert _lines(bad) == [102, 50_003] and len(df) == 100_000
    assert df["_line"].iloc[-1] == 100_003  # line numbers still right after both


def test_line_numbers_count_quoted_newlines(tmp_path):
    """A record spanning 3 lines moves the next records' lines by 3, not 1 (the old reader counted rows)."""
    body = (HEADER + 'u1,i1,1500000000,view,,"first\nsecond\nthird"\n' + "u2,i2,1500000001,view,,ok\n"
            + "u3,i3,1500000002,teleport,,\n" + 'u4,i4,1500000003,view,,"unbalanced\n'
            + "u5,i5,1500000004,view,,ok\n").encode()
    df, bad = _read_events(_write(tmp_path, body))
    assert df["_line"].tolist() == [2, 5, 8] and df["text"].iloc[0] == "first\nsecond\nthird"
    assert sorted(bad.where) == sorted([(f"{tmp_path}/events.csv:6", "unknown_event"),
                                        (f"{tmp_path}/events.csv:7", "unbalanced_quote")])


def test_a_column_named_twice_is_a_clear_error_and_a_repeated_header_line_one_bad_row(tmp_path):
    p = _write(tmp_path, ("user_id,item_id,timestamp,event_type,rating,rating\n" + _rows(0, 10)).encode())
    with pytest.raises(RawDataError, match=r"events.csv:1: column 'rating' appears 2 times in the header"):
        _read_events(p)
    p = _write(tmp_path, ("user_id,item_id,timestamp,event_type,note,note\n" + _rows(0, 10)).encode())
    assert len(_read_events(p)[0]) == 10  # a column prefmine does not read may repeat
    p = _write(tmp_path, (HEADER + _rows(0, 100) + HEADER + _rows(100, 200)).encode())
    df, bad = _read_events(p)
    assert len(df) == 200 and bad.where == [(str(p) + ":102", "repeated_header")]


def test_control_characters_bad_numbers_and_nan_ratings_are_bad_rows(tmp_path):
    body = (HEADER + _rows(0, 5) + "u\x00x,i1,1500000000,view,,\n" + "u1,i\x01,1500000000,view,,\n"
            + '"u\rx",i1,1500000000,view,,\n' + "u1,i1,1500000000,rate,NaN,\n" + "u1,i1,1500000000,rate,inf,\n"
            + "u1,i1,1500000000,rate,,\n" + "u1,i1,15e99x,view,,\n" + "NA,null,1500000000,rate,4,\n"
            + _rows(5, 10)).encode()
    df, bad = _read_events(_write(tmp_path, body))
    assert len(df) == 11 and "NA" in set(df["user"])  # "NA" and "null" are ids, not missing values
    assert dict(bad.counts) == {"bad_id": 3, "bad_rating": 2, "missing_rating": 1, "bad_timestamp": 1}
    assert _lines(bad) == [7, 8, 9, 10, 11, 12, 13]


def test_deep_json_nan_rating_and_non_text_ids_in_json_lines(tmp_path):
    folder = tmp_path / "raw" / "Gift_Cards"
    folder.mkdir(parents=True)

    def line(i, **kw):
        o = {"reviewerID": f"u{i % 7}", "asin": f"i{i % 5}", "overall": 4.0, "unixReviewTime": 1_400_000_000 + i,
             "reviewText": f"fine {i}"}
        o.update(kw)
        return json.dumps(o) + "\n"

    lines = [line(i) for i in range(40)]
    lines[3] = "[" * 100_000 + "]" * 100_000 + "\n"
    lines[5] = line(5).replace("4.0", "NaN")
    lines[7] = line(7, reviewerID={"id": 1})
    lines[9] = line(9, asin="i\u00001")
    lines[11] = line(11, reviewerID="  e\u0301  ")  # the same person as "é"
    lines[13] = line(13, reviewerID="\u00e9")
    (folder / "Gift_Cards_5.json.gz").write_bytes(gzip.compress("".join(lines).encode()))
    m = prepare("amazon2018", tmp_path / "raw", tmp_path / "out", "Gift_Cards", pseudonymiser=PSEUDO,
                on_bad_rows="skip")
    assert m["bad_rows"]["by_reason"] == {"invalid_json": 1, "bad_rating": 1, "bad_id": 2}
    assert m["counts"]["interactions"] == 36
    inter = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert (inter["user"] == PSEUDO("é")).sum() == 2
    with pytest.raises(RawDataError, match=r"Gift_Cards_5.json.gz:4: invalid JSON \(nested too deeply\)"):
        prepare("amazon2018", tmp_path / "raw", tmp_path / "out2", "Gift_Cards", pseudonymiser=PSEUDO)


def test_decompressed_size_cap_and_a_broken_gzip_keep_the_rows_before(tmp_path):
    body = (HEADER + _rows(0, 200_000)).encode()
    p = _write(tmp_path, body, "events.csv.gz")
    df, bad = _read_events(p, ReadLimits(max_decompressed_bytes=len(body) // 2))
    assert set(bad.counts) == {"file_too_large"} and len(df) == body[:len(body) // 2].count(b"\n") - 1
    assert df["_line"].tolist() == list(range(2, 2 + len(df)))  # every complete line before the cap
    packed = bytearray(gzip.compress(body))
    packed[len(packed) // 2: len(packed) // 2 + 64] = b"\x00" * 64  # corrupt the middle of the stream
    p.write_bytes(bytes(packed))
    df, bad = _read_events(p)  # garbage rows from the damaged stretch are bad rows; the CRC check then fails
    first_bad = _lines(bad)[0]
    assert "truncated_file" in bad.counts and first_bad > 50_000
    assert df["_line"][df["_line"] < first_bad].tolist() == list(range(2, first_bad))


def test_ids_are_normalised_the_same_everywhere(tmp_path):
    assert normalise_id(" e\u0301\t") == "\u00e9" == normalise_id("\u00e9")
    assert PSEUDO(" e\u0301\t") == PSEUDO("\u00e9")  # serving and `data forget` pseudonymise through this
    body = (HEADER + "e\u0301,i1,1500000000,view,,\n" + " \u00e9 ,i1 ,1500000001,view,,\n").encode()
    df, bad = _read_events(_write(tmp_path, body))
    assert df["user"].tolist() == ["\u00e9", "\u00e9"] and df["item"].tolist() == ["i1", "i1"]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"asin": " i1 ", "title": "x"}) + "\n")
    assert amazon.read_metadata(meta)["item"].tolist() == ["i1"]


def test_a_short_pseudonymisation_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFMINE_PSEUDONYM_KEY", "x" * (MIN_KEY_BYTES - 1))
    with pytest.raises(WeakKeyError, match=rf"PREFMINE_PSEUDONYM_KEY: the pseudonymisation key is "
                                           rf"{MIN_KEY_BYTES - 1} bytes; at least {MIN_KEY_BYTES}"):
        load_key()
    monkeypatch.setenv("PREFMINE_PSEUDONYM_KEY", "x" * MIN_KEY_BYTES)
    assert load_key() == b"x" * MIN_KEY_BYTES
    monkeypatch.delenv("PREFMINE_PSEUDONYM_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("short\n")
    monkeypatch.setenv("PREFMINE_PSEUDONYM_KEY_FILE", str(key_file))
    with pytest.raises(WeakKeyError, match="PREFMINE_PSEUDONYM_KEY_FILE"):
        load_key()
    monkeypatch.delenv("PREFMINE_PSEUDONYM_KEY_FILE")
    with pytest.warns(UserWarning, match="demo"):
        assert Pseudonymiser(allow_demo=True).fingerprint == DEMO_FINGERPRINT

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(HEADER + _rows(0, 20))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFMINE_PSEUDONYM_KEY")}
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "events", "--raw",
                        str(raw), "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PREFMINE_PSEUDONYM_KEY": "too-short"}, timeout=300)
    assert r.returncode != 0 and "at least 16" in r.stderr and not (tmp_path / "o").exists()


def test_the_old_streaming_path_and_the_record_path_agree_on_quoted_fields(tmp_path):
    """The same rows read through Arrow (one record per line) and through Python's csv (a block with a multi-line
    record) give the same values."""
    rows = 'u1,i1,1500000000,view,,"a, ""quoted"" text"\nu2,"i,2",1500000001,view,,\n u3 ,i3,1500000002,view,,""\n'
    fast, _ = _read_events(_write(tmp_path, (HEADER + rows).encode(), "a.csv"))
    slow, _ = _read_events(_write(tmp_path, (HEADER + rows + 'u4,i4,1500000003,view,,"x\ny"\n').encode(), "b.csv"))
    cols = ["user", "item", "ts", "text", "_line"]
    pd.testing.assert_frame_equal(fast[cols], slow[cols].iloc[:3])
    assert [t if isinstance(t, str) else None for t in fast["text"]] == ['a, "quoted" text', None, None]
    assert fast["item"].tolist() == ["i1", "i,2", "i3"] and fast["user"].tolist()[2] == "u3"


def test_read_delimited_header_problems(tmp_path):
    p = _write(tmp_path, b"x" * 3000 + b"\n" + b"a,b\n")
    with pytest.raises(RawDataError, match="header line is longer than 1000 bytes"):
        list(read_delimited(p, BadRows("skip"), ("a",), limits=ReadLimits(max_record_bytes=1000)))
