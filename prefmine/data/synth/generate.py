"""`synth(out, cfg)`: the entry point that runs the steps in order and writes the log, catalogue and synth.json.

The output is built in a temporary sibling directory and renamed into place, so a failed or interrupted run never
leaves a half-written log where a reader would take it for a finished one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prefmine.data.synth.config import SynthConfig
from prefmine.data.synth.events import event_batch
from prefmine.data.synth.schema import END_TS, EVENT_TYPES, START_TS
from prefmine.data.synth.sessions import make_plan
from prefmine.data.synth.world import build_world
from prefmine.data.synth.write import PartWriter, write_items

_SESSION_BATCH = 50_000  # sessions per generation batch (fixed, so output does not depend on events_per_part)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"synth output {out} already exists and is not an empty directory; refusing to overwrite")


def _generate(tmp: Path, cfg: SynthConfig) -> dict:
    world_rng, plan_rng, event_rng, item_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed)
                                                .spawn(4))
    world = build_world(cfg, world_rng)
    plan = make_plan(cfg, world, plan_rng)
    events_dir = tmp / "events"
    events_dir.mkdir()
    writer = PartWriter(events_dir, cfg)
    counts = np.zeros(len(EVENT_TYPES), np.int64)
    seen_items = np.zeros(cfg.items, bool)
    first_ts = np.full(cfg.items, np.iinfo(np.int64).max, np.int64)  # each item's first event (content's date)
    for lo in range(0, len(plan.user), _SESSION_BATCH):
        batch, types, items = event_batch(plan, lo, min(lo + _SESSION_BATCH, len(plan.user)), world, cfg, event_rng)
        counts += np.bincount(types, minlength=len(EVENT_TYPES))
        seen_items[items] = True
        np.minimum.at(first_ts, items, batch.column("timestamp").to_numpy())
        writer.add(batch)
    parts = writer.close()
    write_items(tmp / f"items.{cfg.fmt}", cfg, world, item_rng, first_ts)
    return {
        "format": "prefmine-synth/1",
        "users": cfg.users,
        "items": cfg.items,
        "events": cfg.events,
        "seed": cfg.seed,
        "parts": parts,
        "events_per_part": cfg.events_per_part,
        "fmt": cfg.fmt,
        "counts": {name: int(n) for name, n in zip(EVENT_TYPES, counts)},
        "sessions": len(plan.user),
        "active_users": int(len(np.unique(plan.user))),
        "active_items": int(seen_items.sum()),
        "categories": int(len(world.cat_p)),
        "time_range": [START_TS, END_TS],
        "config": asdict(cfg),
    }


def synth(out: str | Path, cfg: SynthConfig) -> dict:
    """Write a synthetic event log, catalogue and synth.json into `out` (new or empty); returns synth.json."""
    cfg.validate()
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        manifest = _generate(tmp, cfg)
        (tmp / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _check_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
