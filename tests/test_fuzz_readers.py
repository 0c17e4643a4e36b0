"""Property-based tests of the raw readers: generated dirty files (ragged rows, unbalanced quotes, lines over the
record cap, NUL and control characters in ids, bad numbers, NaN, repeated headers, bytes that are not UTF-8, deep
JSON, broken gzip) mixed with good rows, quoted multi-line fields among them. The invariant: every good row is
kept with its values and its real first line, and every bad row is counted once, by its real line and reason.
Small read blocks and caps put block boundaries and caps everywhere in the generated files."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math

import pandas as pd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prefmine.data.privacy import normalise_id
from prefmine.data.readers.blocks import ReadLimits
from prefmine.data.rows import BadRows, check_rows
from prefmine.data.sources import amazon, events

HEADER = ["user_id", "item_id", "timestamp", "event_type", "rating", "review_text"]
CAP = 300
# No shrinking: each example writes and reads files, and shrinking one failure took over five minutes here; the
# failing example is printed whole.
SETTINGS = settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

id_core = st.lists(st.sampled_from(list("abcxyz019_-.") + ["é", "e\u0301", "ü", "日", "ß"]), min_size=1,
                   max_size=8).map("".join)
pad = st.sampled_from(["", " ", "\t", "  "])
ident = st.builds(lambda a, core, b: a + core + b, pad, id_core, pad)
text = st.text(alphabet=st.sampled_from(list("ab é,\"\n")), max_size=30)
good_ts = st.integers(700_000_000, 1_700_000_000)
events_ = st.sampled_from(["view", "click", "cart", "buy", "rate"])


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()  # a CR is quoted too (the writer only quotes its line terminator's characters)
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL if any("\r" in f for f in fields)
               else csv.QUOTE_MINIMAL).writerow(fields)
    return out.getvalue()


def _unambiguous(r: dict) -> bool:
    """The readers' documented limit: a quoted text that starts with a quote, a comma or a line break closes a
    stray quote of an earlier line cleanly; that file reads the same as one whose earlier row has a multi-line
    text, so the generator leaves such texts out."""
    return not r["text"].startswith(('"', ",", "\n"))


@st.composite
def good_row(draw):
    event = draw(events_)
    rating = draw(st.sampled_from(["1", "4.5", "5"])) if event == "rate" else draw(st.sampled_from(["", "3"]))
    r = {"user": draw(ident), "item": draw(ident), "ts": draw(good_ts), "event": event, "rating": rating,
         "text": draw(text)}
    return r if _unambiguous(r) else {**r, "text": "x" + r["text"]}


def _fields(r: dict) -> list[str]:
    return [r["user"], r["item"], str(r["ts"]), r["event"], r["rating"], r["text"]]


@st.composite
def bad_row(draw):
    """(bytes of the record, reason) for one bad record of a kind the readers must skip alone."""
    r = draw(good_row())
    r["text"] = r["text"].replace("\n", " ").replace('"', "")
    kind = draw(st.sampled_from(["ragged", "quote", "huge", "control", "empty_id", "bad_ts", "old_ts", "event",
                                 "bad_rating", "nan", "unrated", "header", "utf8"]))
    if kind == "ragged":
        f = _fields(r)
        f = f[:draw(st.integers(1, 5))] if draw(st.booleans()) else f + ["extra"]
        return _csv_line(f).encode(), "wrong_field_count"
    if kind == "quote":
        f = _fields(r)
        f[-1] = '"x' + r["text"].replace(",", "")  # (a quote at the line's end would close an earlier stray one)
        return (",".join(f) + "\n").encode(), "unbalanced_quote"
    if kind == "huge":
        return b"x" * draw(st.integers(CAP + 1, 3 * CAP)) + b"\n", "record_too_large"
    if kind == "control":
        c = draw(st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\x85", "\r", "\n"]))
        r[draw(st.sampled_from(["user", "item"]))] = "a" + c + "b"
        return _csv_line(_fields(r)).encode(), "bad_id"
    if kind == "empty_id":
        r["user"] = draw(st.sampled_from(["", " ", "\t"]))
        return _csv_line(_fields(r)).encode(), "missing_user"
    if kind == "bad_ts":
        r["ts"] = draw(st.sampled_from(["abc", "12x", "", "1e400"]))
        return _csv_line(_fields(r)).encode(), "bad_timestamp"  # 1e400 is inf: not a finite number
    if kind == "old_ts":
        r["ts"] = draw(st.integers(0, 600_000_000))
        return _csv_line(_fields(r)).encode(), "timestamp_before_1990"
    if kind == "event":
        r["event"] = draw(st.sampled_from(["wishlist", "", "v iew"]))
        return _csv_line(_fields(r)).encode(), "unknown_event"
    if kind in ("bad_rating", "nan"):
        r["event"], r["rating"] = "rate", draw(st.sampled_from(["five", "4,5"] if kind == "bad_rating"
                                                               else ["NaN", "nan", "inf", "-inf"]))
        return _csv_line(_fields(r)).encode(), "bad_rating"
    if kind == "unrated":
        r["event"], r["rating"] = "rate", ""
        return _csv_line(_fields(r)).encode(), "missing_rating"
    if kind == "header":
        return _csv_line(HEADER).encode(), "repeated_header"
    r["text"] = "ok"
    return _csv_line(_fields(r)).encode().replace(b"ok", b"o\xffk"), "not_utf8"


@st.composite
def dirty_csv(draw):
    """A file's bytes, its good rows (with their lines) and its bad rows' (line, reason)."""
    parts = [_csv_line(HEADER).encode()]
    line = 2
    good, bad = [], []
    for _ in range(draw(st.integers(0, 40))):
        choice = draw(st.sampled_from(["good", "good", "good", "bad", "blank"]))
        if choice == "blank":
            body = draw(st.sampled_from([b"\n", b"\r\n"]))
        elif choice == "good":
            r = draw(good_row())
            body = _csv_line(_fields(r)).encode()
            good.append((line, normalise_id(r["user"]), normalise_id(r["item"]), r["ts"], r["event"],
                         float(r["rating"]) if r["rating"] else None, r["text"] or None))
        else:
            body, reason = draw(bad_row())
            bad.append((line, reason))
        parts.append(body)
        line += body.count(b"\n")
    return b"".join(parts), good, bad


def _read(path, limits: ReadLimits):
    bad = BadRows("skip", keep_all=True)
    frames = [check_rows(df, path, events.rules(), bad, events.NAMES)
              for df in events.read_chunk({"path": str(path)}, bad, limits)]
    df = pd.concat(frames, ignore_index=True) if frames else None
    got = [] if df is None else [
        (int(line), user, item, int(ts), event, None if math.isnan(rating) else float(rating),
         txt if isinstance(txt, str) else None)
        for line, user, item, ts, event, rating, txt in zip(df["_line"], df["user"], df["item"], df["ts"],
                                                            df["event"], df["rating"], df["text"])]
    return got, _reported(bad), bad


def _reported(bad: BadRows) -> list[tuple[int, str]]:
    """(line, reason) of every bad row; line 0 for a whole-file problem."""
    return sorted((int(w.rsplit(":", 1)[1]) if w.count(":") else 0, reason) for w, reason in bad.where)


@SETTINGS
@given(case=dirty_csv(), block=st.sampled_from([16, 100, 1000, 1 << 20]), gz=st.booleans())
def test_every_good_csv_row_is_kept_and_every_bad_one_counted_by_its_line(tmp_path_factory, case, block, gz):
    body, good, bad = case
    path = tmp_path_factory.mktemp("fuzz") / ("events.csv.gz" if gz else "events.csv")
    path.write_bytes(gzip.compress(body) if gz else body)
    got, reported, counter = _read(path, ReadLimits(max_record_bytes=CAP, block_bytes=block))
    if not good and not bad:
        assert reported == [(0, "empty_file")]
        return
    assert got == good
    assert reported == sorted(bad)
    assert sum(counter.counts.values()) == len(bad)


@SETTINGS
@given(case=dirty_csv(), cut=st.floats(0.05, 0.95))
def test_a_truncated_gzip_keeps_every_good_row_before_the_break(tmp_path_factory, case, cut):
    body, good, bad = case
    packed = gzip.compress(body)
    path = tmp_path_factory.mktemp("fuzz") / "events.csv.gz"
    path.write_bytes(packed[:max(1, int(len(packed) * cut))])
    got, reported, _ = _read(path, ReadLimits(max_record_bytes=CAP, block_bytes=100))
    breaks = [line for line, reason in reported if reason == "truncated_file"]
    assert len(breaks) == 1
    assert set(got) <= set(good)
    ends = {g[0]: g[0] + (g[-1] or "").count("\n") for g in good}
    assert {g for g in good if ends[g[0]] < breaks[0]} <= set(got)


json_good = st.fixed_dictionaries({"reviewerID": ident, "asin": ident, "overall": st.sampled_from([1.0, 3.0, 5]),
                                   "unixReviewTime": good_ts, "reviewText": text})


@st.composite
def dirty_json(draw):
    parts, good, bad = [], [], []
    line = 1
    for _ in range(draw(st.integers(1, 30))):
        o = draw(json_good)
        kind = draw(st.sampled_from(["good"] * 4 + ["blank", "syntax", "deep", "nan", "missing", "list", "dict_id",
                                                    "nul_id", "utf8", "huge", "inf"]))
        reason = {"syntax": "invalid_json", "deep": "invalid_json", "nan": "bad_rating", "list": "invalid_json",
                  "missing": "missing_unixReviewTime", "dict_id": "bad_id", "nul_id": "bad_id", "utf8": "not_utf8",
                  "huge": "record_too_large", "inf": "bad_rating"}.get(kind)
        if kind == "good":
            b = json.dumps(o).encode()
            good.append((line, normalise_id(o["reviewerID"]), normalise_id(o["asin"]), o["unixReviewTime"],
                         float(o["overall"])))
        elif kind == "blank":
            b = b""
        elif kind == "syntax":
            b = json.dumps(o).encode()[:-draw(st.integers(1, 5))]
        elif kind == "deep":
            b = b"[" * 5000 + b"]" * 5000
        elif kind in ("nan", "inf"):
            b = json.dumps(o).encode().replace(b'"overall": ', b'"overall": NaN, "x": ' if kind == "nan"
                                               else b'"overall": Infinity, "x": ')
        elif kind == "missing":
            o.pop("unixReviewTime")
            b = json.dumps(o).encode()
        elif kind == "list":
            b = json.dumps([o]).encode()
        elif kind == "dict_id":
            o["asin"] = {"id": o["asin"]}
            b = json.dumps(o).encode()
        elif kind == "nul_id":
            o["reviewerID"] = "a\u0000b"
            b = json.dumps(o).encode()
        elif kind == "utf8":
            b = json.dumps(o).encode() + b" \xff"
        else:
            b = b" " * 40_001
        if reason:
            bad.append((line, reason))
        parts.append(b + b"\n")
        line += 1
    return b"".join(parts), good, bad


@SETTINGS
@given(case=dirty_json(), block=st.sampled_from([100, 1 << 20]), gz=st.booleans())
def test_every_good_json_line_is_kept_and_every_bad_one_counted_by_its_line(tmp_path_factory, case, block, gz):
    body, good, bad = case
    path = tmp_path_factory.mktemp("fuzz") / ("reviews.json.gz" if gz else "reviews.json")
    path.write_bytes(gzip.compress(body) if gz else body)
    counter = BadRows("skip", keep_all=True)
    frames = [check_rows(df, path, amazon.rules(), counter, amazon.JSON_NAMES)
              for df in amazon.read_chunk({"path": str(path), "kind": "both"}, counter,
                                          ReadLimits(max_record_bytes=40_000, block_bytes=block))]
    got = [(int(line), user, item, int(ts), float(rating)) for f in frames
           for line, user, item, ts, rating in zip(f["_line"], f["user"], f["item"], f["ts"], f["rating"])]
    reported = _reported(counter)
    if not good and not bad:
        assert reported == [(0, "empty_file")]
        return
    assert got == good
    assert reported == sorted(bad)
