"""What an ads operator does to the shared store from the command line (`prefmine ads campaigns`): write campaigns
from a file, list them with today's money, pause one.

A campaign file is CSV (a header row naming the columns) or JSON lines, one campaign a row, with the fields
`campaign_id`, `daily_budget`, and optionally `freq_cap` (empty: AdsConfig.freq_cap) and `active` (true, the
default, or false). CSV cells are text: a number or true/false that does not read as one is passed on as the
text, so the check refuses it naming the field and the value. Every row goes through
prefmine.ads.campaigns.validate_campaigns, the check WriteCampaigns uses: a bad row is refused with its line and
the field at fault, the good rows are written.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefmine.ads.campaigns import MAX_ROWS, Campaign, Unparsable, validate_campaigns

FIELDS = ("campaign_id", "daily_budget", "freq_cap", "active")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return text  # refused by the check, which names the field and shows the value


def row_campaign(rec: object, text: bool) -> Campaign | Unparsable:
    """One file row (a mapping of FIELDS) as a Campaign; `text`: the values are CSV text to read first."""
    if not isinstance(rec, dict):
        return Unparsable("", f"expected an object with the fields {', '.join(FIELDS)}")
    cid = rec.get("campaign_id", "")
    unknown = sorted(str(k) for k in rec if k not in FIELDS)
    if unknown:
        return Unparsable(str(cid), f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    budget, cap, active = rec.get("daily_budget"), rec.get("freq_cap"), rec.get("active", True)
    if text:
        budget = None if budget in (None, "") else _number(budget.strip(), float)
        cap = None if cap in (None, "") else _number(cap.strip(), int)
        active = True if active in (None, "") else _BOOLS.get(active.strip().lower(), active)
    return Campaign(campaign=cid, daily_budget=budget, freq_cap=cap, active=active)


def read_campaign_file(path: str | Path) -> list[tuple[int, Campaign | Unparsable]]:
    """(line number, row) of every row of a .csv or JSON-lines file; blank JSON lines are skipped."""
    path = Path(path)
    out: list[tuple[int, Campaign | Unparsable]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            for rec in reader:
                if None in rec:  # more cells than header columns
                    out.append((reader.line_num, Unparsable(rec.get("campaign_id") or "",
                                                            "more cells than the header has columns")))
                    continue
                out.append((reader.line_num, row_campaign(rec, text=True)))
            return out
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.append((n, Unparsable("", f"not JSON ({e.msg})")))
                continue
            out.append((n, row_campaign(rec, text=False)))
    return out


@dataclass
class WriteResult:
    """How many campaigns were written, and each refused row as (line, campaign id, reason)."""

    stored: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)


def write_campaign_file(ledger, path: str | Path) -> WriteResult:
    """Check the file's rows and write the good ones to `ledger` (prefmine.feedback.ads_ledger.AdLedger), in
    batches of MAX_ROWS rows (each batch one transaction)."""
    rows = read_campaign_file(path)
    result = WriteResult()
    for start in range(0, len(rows), MAX_ROWS):
        batch = rows[start:start + MAX_ROWS]
        good, bad = validate_campaigns([row for _, row in batch])
        result.refused += [(batch[e.index][0], e.campaign, e.reason) for e in bad]
        if good:
            result.stored += ledger.put_campaigns(good)
    return result


def campaign_report(ledger, day: str) -> list[dict]:
    """Every stored campaign with its money on `day` (a UTC date): spent (clicks charged), held (prices of ads
    shown and waiting for a click) and remaining (what the auction may still hold)."""
    camps = ledger.all_campaigns()
    spend = ledger.spend([c.campaign for c in camps], day)
    out = []
    for c in camps:
        committed, held = spend[c.campaign]
        out.append({"campaign_id": c.campaign, "daily_budget": c.daily_budget, "freq_cap": c.freq_cap,
                    "active": c.active, "day": day, "spent": committed, "held": held,
                    "remaining": max(0.0, c.daily_budget - committed - held)})
    return out
