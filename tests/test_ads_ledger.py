"""The ad ledger in the feedback store (prefmine.feedback.ads_ledger) on both backends, a SQLite file and the
session's real PostgreSQL server: campaigns written and read back, hold / commit / release with a click charged
once, frequency caps counted from the logged ad impressions, and two OS processes holding one campaign's budget
at once never pushing committed + held over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefmine.ads.campaigns import Campaign, validate_campaigns
from prefmine.feedback import open_feedback_store

ROOT = Path(__file__).resolve().parents[1]
DAY = "2026-12-04"

HOLDER = r"""
import json, sys
from prefmine.feedback import open_feedback_store
loc, name, n, amount = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = open_feedback_store(loc)
print("ready", flush=True)
sys.stdin.readline()  # the start signal: both processes hold together
got = [store.ads.hold(f"{name}-{i}", "shared", f"{name}-user-{i}", "item", amount, "2026-12-04", 1000, 86400.0)
       for i in range(n)]
print(json.dumps(got), flush=True)
store.close()
"""


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite")
    return request.getfixturevalue("postgres_server").new_database()


def test_campaign_rows_refused_by_name():
    good, bad = validate_campaigns([Campaign("ok-1", 5.0), Campaign("bad id", 1.0), Campaign("neg", -1.0),
                                    Campaign("cap", 1.0, freq_cap=0), Campaign("nan", float("nan"))])
    assert [c.campaign for c in good] == ["ok-1"]
    assert [(e.index, e.reason.split()[0]) for e in bad] == [(1, "campaign_id"), (2, "daily_budget"),
                                                            (3, "freq_cap"), (4, "daily_budget")]


def test_hold_commit_release_and_caps(location):
    store = open_feedback_store(location)
    ads = store.ads
    ads.put_campaigns([Campaign("c1", 1.0, freq_cap=2), Campaign("c2", 0.5), Campaign("off", 9.0, active=False)])
    assert ads.campaigns(["c1", "off", "nope"]) == {"c1": Campaign("c1", 1.0, 2, True),
                                                    "off": Campaign("off", 9.0, None, False)}
    # the campaign's own cap (2) overrides the default (5); another user is not capped by the first's views
    assert [ads.hold(f"a{i}", "c1", "u1", "i1", 0.2, DAY, 5, 3600.0, now=1000.0 + i) for i in range(3)] == \
        ["ok", "ok", "frequency_cap"]
    assert ads.impressions("u1", ["c1", "c2"], since=0.0) == {"c1": 2, "c2": 0}
    assert ads.impressions("u1", ["c1"], since=1000.5) == {"c1": 1}  # the window slides
    assert ads.hold("late", "c1", "u1", "i1", 0.2, DAY, 5, 3600.0, now=1000.0 + 3601) == "ok"  # first one left it
    assert ads.hold("x", "off", "u1", "i1", 0.1, DAY, 5, 3600.0) == "inactive"
    assert ads.hold("y", "nope", "u1", "i1", 0.1, DAY, 5, 3600.0) == "inactive"
    # budget 1.0: 0.6 held by u1, 0.4 more fits, then nothing
    assert ads.hold("b1", "c1", "u2", "i1", 0.4, DAY, 5, 3600.0, now=2000.0) == "ok"
    assert ads.hold("b2", "c1", "u3", "i1", 0.01, DAY, 5, 3600.0, now=2000.0) == "budget"
    assert ads.spend(["c1"], DAY)["c1"] == pytest.approx((0.0, 1.0))
    # a click commits its hold once; another user's or item's click on it charges nothing
    assert ads.commit("a0", "u2", "i1") == 0.0 and ads.commit("a0", "u1", "other") == 0.0
    assert ads.commit("a0", "u1", "i1") == pytest.approx(0.2)
    assert ads.commit("a0", "u1", "i1") == 0.0  # the retried click
    assert ads.spend(["c1"], DAY)["c1"] == pytest.approx((0.2, 0.8))
    # holds older than the TTL are released (not the committed one), and a click after that charges nothing
    assert ads.release_expired(100.0, now=1101.5) == 1  # a1 (ts 1001)
    assert ads.commit("a1", "u1", "i1") == 0.0
    assert ads.release_expired(100.0, now=1e9) == 2  # late, b1
    assert ads.spend(["c1"], DAY)["c1"] == pytest.approx((0.2, 0.0))
    assert ads.spend(["c2"], DAY)["c2"] == (0.0, 0.0)
    # forget erases the user from the ad log; the spend stays
    store.forget("u1")
    assert ads.impressions("u1", ["c1"], since=0.0) == {"c1": 0}
    assert ads.spend(["c1"], DAY)["c1"] == pytest.approx((0.2, 0.0))
    store.close()


def test_two_processes_never_overspend(location):
    """Budget 2.0, holds of 0.1 from two processes at once (25 each): exactly 20 succeed, and committed + held
    is the budget, never above."""
    store = open_feedback_store(location)
    store.ads.put_campaigns([Campaign("shared", 2.0)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, location, name, "25", "0.1"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for name in ("p", "q")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    oks = sum(r.count("ok") for r in results)
    assert oks == 20 and all(set(r) <= {"ok", "budget"} for r in results)
    committed, held = store.ads.spend(["shared"], DAY)["shared"]
    assert committed == 0.0 and held == pytest.approx(2.0) and held <= 2.0 + 1e-9
    store.close()


def test_campaigns_cli_write_list_pause(location, tmp_path, capsys):
    """`prefmine ads campaigns` on the store: a CSV and a JSONL file with good and bad rows (each bad one refused
    by its line and field, the good ones written), the day's money per campaign, a pause that keeps the campaign
    out of the next hold."""
    from prefmine.cli.main import main

    csv_file = tmp_path / "campaigns.csv"
    csv_file.write_text("campaign_id,daily_budget,freq_cap,active\n"
                        "spring,10,2,true\n"
                        "bad id,5,,\n"
                        "ten,ten,,\n"
                        "cap0,5,0,\n"
                        "maybe,5,,maybe\n"
                        "wide,5,,,extra\n"
                        "autumn,2.5,,\n")
    assert main(["ads", "campaigns", "write", str(csv_file), "--feedback", location]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"stored": 2, "refused": 5}
    refused = [line.split(": ", 1) for line in err.splitlines()]
    assert [(where, why.split()[0]) for where, why in refused] == [
        ("refused line 3 (campaign 'bad id')", "campaign_id"), ("refused line 4 (campaign 'ten')", "daily_budget"),
        ("refused line 5 (campaign 'cap0')", "freq_cap"), ("refused line 6 (campaign 'maybe')", "active"),
        ("refused line 7 (campaign 'wide')", "more")]
    jsonl = tmp_path / "campaigns.jsonl"
    jsonl.write_text('{"campaign_id": "summer", "daily_budget": 1, "active": false}\n\n{"campaign_id": "x"\n'
                     '{"campaign_id": "colour", "daily_budget": 1, "color": "red"}\n'
                     '{"campaign_id": "autumn", "daily_budget": 3.0, "freq_cap": 4}\n')
    assert main(["ads", "campaigns", "write", str(jsonl), "--feedback", location]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"stored": 2, "refused": 2}
    assert "line 3 (campaign ''): not JSON" in err and "line 4 (campaign 'colour'): unknown field 'color'" in err

    store = open_feedback_store(location)
    assert store.ads.hold("h1", "spring", "u1", "i1", 0.5, DAY, 3, 3600.0) == "ok"
    assert store.ads.hold("h2", "spring", "u2", "i1", 1.0, DAY, 3, 3600.0) == "ok"
    assert store.ads.commit("h1", "u1", "i1") == pytest.approx(0.5)
    assert main(["ads", "campaigns", "list", "--feedback", location, "--day", DAY]) == 0
    rows = {r["campaign_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["autumn", "spring", "summer"]
    assert (rows["spring"]["spent"], rows["spring"]["held"], rows["spring"]["remaining"]) == pytest.approx((0.5, 1.0, 8.5))
    assert (rows["autumn"]["daily_budget"], rows["autumn"]["freq_cap"], rows["autumn"]["remaining"]) == (3.0, 4, 3.0)
    assert rows["summer"]["active"] is False and rows["spring"]["freq_cap"] == 2

    assert main(["ads", "campaigns", "pause", "spring", "--feedback", location]) == 0
    assert main(["ads", "campaigns", "pause", "nope", "--feedback", location]) == 2
    capsys.readouterr()
    assert store.ads.campaigns(["spring"])["spring"].active is False
    assert store.ads.hold("h3", "spring", "u3", "i1", 0.1, DAY, 3, 3600.0) == "inactive"
    store.close()


def test_erased_person_is_capped_in_memory_and_stored_nowhere(location):
    """After `forget` a person's ad impressions are anonymous, and Rank serves them as erased: none of their new
    impressions is stored under their pseudonym, yet they still see at most the cap per window (counted in the
    replica's memory), separately from another erased person, and again once the window has passed."""
    from dataclasses import asdict

    from prefmine.ads.config import AdsConfig
    from serve.rpc_ads import AdServing

    store = open_feedback_store(location)
    store.ads.put_campaigns([Campaign("c", 100.0), Campaign("own-cap", 100.0, freq_cap=1)])
    ads = AdServing(asdict(AdsConfig(reserves=(0.01,), freq_cap=2, freq_window_s=100.0)))

    def shown(user, t, erased=False, campaign="c"):
        out = ads.run(store, user, ["i1"], [campaign], [1.0], [0.5], erased=erased, now=t)
        return out.slot.get(0) == 1 or out.unplaced[0]

    assert [shown("u1", 1000.0 + i) for i in range(3)] == [True, True, "frequency_cap"]
    store.forget("u1")
    assert store.ads.impressions("u1", ["c"], since=0.0) == {"c": 0}
    assert [shown("u1", 1010.0 + i, erased=True) for i in range(3)] == [True, True, "frequency_cap"]
    assert [shown("u1", 1020.0 + i, erased=True, campaign="own-cap") for i in range(2)] == [True, "frequency_cap"]
    assert shown("u2", 1030.0, erased=True) is True  # another erased person has a count of their own
    assert store.ads.impressions("u1", ["c", "own-cap"], since=0.0) == {"c": 0, "own-cap": 0}
    assert store.ads.impressions("", ["c", "own-cap"], since=0.0) == {"c": 5, "own-cap": 1}  # all anonymous
    assert shown("u1", 1111.0, erased=True) is True  # the window has passed
    store.close()


def test_rank_reads_are_one_query_per_kind_whatever_the_candidates(tmp_path):
    """Rank's reads (campaigns, the day's spend, the user's impressions) are batched: a Rank with 60 sponsored
    candidates sends the store exactly as many statements as one with 4 (the three reads and three winners'
    holds), counted by SQLite's own statement trace."""
    import numpy as np

    from prefmine.ads.config import AdsConfig
    from prefmine.serving.ad_auction import auction

    store = open_feedback_store(tmp_path / "feedback.sqlite")
    counts = []
    for n in (4, 60):
        ids = [f"n{n}-{i}" for i in range(n)]
        store.ads.put_campaigns([Campaign(c, 1000.0) for c in ids])
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        rng = np.random.default_rng(n)
        out = auction(store.ads, "u1", [f"i{i}" for i in range(n)], ids, np.ones(n), rng.uniform(0.1, 0.9, n),
                      AdsConfig(), rng, now=1e9)
        store._db.set_trace_callback(None)
        assert len(out.slot) == 3 and len(out.unplaced) == n - 3
        counts.append((len(statements), sum(s.lstrip().upper().startswith("SELECT") for s in statements)))
    assert counts[0] == counts[1], counts
    store.close()
