"""The feedback loop that runs itself: every `--every` minutes, one guarded incremental update.

One round (`run_round`):

1. The serving version is what `BUNDLES/current` points at. New feedback is what the store holds after the id
   the last round examined (guard_log.jsonl's last line; the serving version's consumed id before any round).
   Fewer than `min_events` new events: nothing is written, not even a log line.
2. A candidate version is built by `cluster.update_policy.update_policy` from the serving version and every
   event it has not consumed except the held-out ones (each user's last new interaction, which the guard judges
   on), written beside it (the ranker is fine-tuned and the policy continues training, both on those events).
3. The guard (prefmine.update.guard) evaluates the candidate and the serving version on the SAME data: the
   impressions logged since the last round (SNIPS and DR of each version's slates) and each user's last new
   interaction (NDCG@k, Recall@k). Not worse on every judged metric (paired 95% interval's low >= -tolerance,
   UpdateConfig's guard_* keys): rolled in; otherwise refused and its directory removed (its events are read
   again next round, with the newer ones).
4. Rolling in: the held-out events join the candidate's histories and popularity (so none is lost), the lineage
   (parent, consumed feedback id, guard figures) is written into the candidate's manifest (resealed), `BUNDLES/current` is repointed atomically, and the serve process gets SIGHUP
   (`--serve-pid`): serve.run's rollout loads the new version beside the old and switches replicas without a
   failed request, the path operators already use; a loop without --serve-pid only repoints the link.

Every round that builds a candidate appends one JSON line to BUNDLES/guard_log.jsonl. Run it as a Ray job so it
shows in the dashboard: `prefmine jobs submit -- prefmine update loop --bundles B --feedback F --every 10`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from prefmine import train_config
from prefmine.config import ConfigError
from prefmine.policy.config import UpdateConfig
from prefmine.update import publish


def _last_examined(bundles: Path, serving: Path) -> tuple[int, int]:
    """(feedback id, impression seq) the last round examined; before any round, what the serving version consumed."""
    from prefmine.bundle import read_manifest

    log = publish.read_log(bundles)
    if log:
        return int(log[-1]["examined_id"]), int(log[-1]["impression_seq"])
    comp = read_manifest(serving).get("components", {}).get("policy", {})
    return int(comp.get("feedback_consumed_id", 0)), 0


def _read_impressions(feedback: str, after_seq: int, limit: int):
    from prefmine.feedback import open_feedback_store

    store = open_feedback_store(feedback, create=False)
    try:
        imps, last = [], after_seq
        while True:
            page = store.read_impressions_since(last, 10_000)
            imps += page
            if len(page) < 10_000:
                break
            last = page[-1].seq
        imps = imps[-limit:]
        fb = store.feedback_for_impressions([i.impression_id for i in imps]) if imps else {}
        return imps, fb
    finally:
        store.close()


def _erased(feedback: str) -> frozenset:
    """The tombstoned pseudonyms beside the feedback store (prefmine/data/tombstones.py), as update_policy reads them."""
    from prefmine.data.tombstones import default_location, open_list

    where = default_location(feedback)
    return open_list(where).load() if where else frozenset()


def _held_out(serving: Path, events: list[tuple]) -> frozenset[int]:
    """The ids of the events the guard holds out (each user's last new interaction, prefmine.update.context)."""
    from prefmine.bundle import load_catalog
    from prefmine.update.context import held_out_ids

    catalog = load_catalog(serving)
    index = {str(it): i for i, it in enumerate(catalog.items["item"].to_numpy())}
    return held_out_ids({u: [int(i) for i in s] for u, s in catalog.histories.items()}, events, index)


def learn_held_out(version_dir: Path, held_events: list[tuple]) -> None:
    """Add the held-out events to a version about to be rolled in (histories and popularity, as update_policy
    applies events; its policy is not retrained on them), so that no event is lost: the version counts them as
    consumed. The catalogue is rewritten from histories alone, as update_policy writes it; the caller reseals."""
    from cluster.update_policy import apply_events
    from prefmine.bundle import Catalog, load_catalog, save_catalog

    if not held_events:
        return
    catalog = load_catalog(version_dir)
    histories = {u: [int(i) for i in s] for u, s in catalog.histories.items()}
    popularity = catalog.popularity.astype(np.float64)
    apply_events(held_events, catalog.items["item"].to_numpy(), histories, popularity,
                 np.full(len(catalog.items), 0.5), 1.0)
    save_catalog(version_dir, Catalog(catalog.items, histories, popularity))


def judge(serving: Path, candidate: Path, feedback: str, events: list[tuple], impressions, imp_feedback,
          cfg: UpdateConfig) -> dict:
    """The guard's verdict on candidate vs serving (prefmine.update.guard.compare) on the new data."""
    from prefmine.bundle import load_catalog
    from prefmine.update.context import clicked_items, held_out_events, impression_histories
    from prefmine.update.guard import VersionScorer, compare

    catalog = load_catalog(serving)
    index = {str(it): i for i, it in enumerate(catalog.items["item"].to_numpy())}
    histories = {u: [int(i) for i in s] for u, s in catalog.histories.items()}
    users_hist, targets = held_out_events(histories, events, index)
    imp_hist = impression_histories(histories, events, index, impressions)
    rule = cfg.guard_rule()
    return compare(VersionScorer(serving, rule), VersionScorer(candidate, rule), impressions,
                   clicked_items(imp_feedback), imp_hist, index, users_hist, targets, rule)


def run_round(bundles: str | Path, feedback: str, cfg: UpdateConfig, round_no: int = 0,
              serve_pid: int | None = None, build=None, verbose: bool = False) -> dict | None:
    """One round (module docstring). `build(serving, feedback, out, cfg)` makes the candidate directory and
    returns update_policy's summary (default: update_policy itself). Returns the log record, or None when there
    were too few new events."""
    from cluster.update_policy import read_events

    t0 = time.time()
    bundles = Path(bundles)
    serving = publish.current_version(bundles)
    examined_id, imp_seq = _last_examined(bundles, serving)
    fresh = read_events(feedback, examined_id, cfg.page_size)
    if len(fresh) < cfg.min_events:
        return None
    if build is None:
        from cluster.update_policy import update_policy

        def build(serving_dir, fb, out, c, held):
            return update_policy(serving_dir, fb, out, c, verbose=verbose, exclude_ids=held)

    from prefmine.bundle import new_version, read_manifest

    parent = read_manifest(serving)
    consumed_from = int(parent.get("components", {}).get("policy", {}).get("feedback_consumed_id", 0))
    events = read_events(feedback, consumed_from, cfg.page_size)  # everything the candidate learns from
    held = _held_out(serving, [e for e in events if e[1] not in _erased(feedback)])
    out = bundles / f".candidate-r{round_no}-{new_version(parent.get('data_hash') or 'nodata')}"
    summary = build(serving, feedback, out, cfg, held)
    if summary.get("updated"):  # named by its manifest's version, as update_policy names versions
        out = out.rename(bundles / summary["version"])
    record = {"round": round_no, "serving_version": parent.get("version"), "examined_id": int(fresh[-1][0]),
              "new_events": len(fresh), "impression_seq": imp_seq}
    if not summary.get("updated"):
        record.update({"candidate_version": None, "decision": "none", "reason": summary.get("reason"),
                       "seconds": round(time.time() - t0, 1)})
        publish.append_log(bundles, record)
        return record
    imps, imp_fb = _read_impressions(feedback, imp_seq, cfg.guard_max_impressions)
    erased = _erased(feedback)  # people erased since are judged on no more than they are learned from
    try:
        verdict = judge(serving, out, feedback, [e for e in events if e[1] not in erased],
                        [i for i in imps if i.user not in erased], imp_fb, cfg)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no unjudged candidate is left among the versions
        raise
    record.update({"candidate_version": summary["version"], "figures": verdict["figures"],
                   "differences": verdict["differences"], "skipped": verdict["skipped"],
                   "decision": "rolled_in" if verdict["rolled_in"] else "refused", "reason": verdict["reason"],
                   "impressions": len(imps), "impression_seq": imps[-1].seq if imps else imp_seq,
                   "consumed_id": summary["consumed_id"], "ranker": summary.get("ranker")})
    record["held_out"] = len(held)
    if verdict["rolled_in"]:
        learn_held_out(out, [e for e in events if int(e[0]) in held and e[1] not in erased])
        publish.add_lineage(out, {"parent_version": parent.get("version"), "round": round_no,
                                  "feedback_consumed_id": summary["consumed_id"], "guard": verdict,
                                  "held_out_learned_after_the_guard": len(held)})
        publish.point_current(bundles, out)
        if serve_pid:
            os.kill(int(serve_pid), signal.SIGHUP)
            record["signalled"] = int(serve_pid)
    else:
        shutil.rmtree(out, ignore_errors=True)
    record["seconds"] = round(time.time() - t0, 1)
    publish.append_log(bundles, record)
    return record


def loop(bundles: str, feedback: str, every_min: float, rounds: int | None, cfg: UpdateConfig,
         serve_pid: int | None = None, out=sys.stdout) -> int:
    """Round after round, `every_min` minutes from one round's start to the next; `rounds` None: forever. A
    round that fails is printed as `decision: error` (nothing logged, so the next round retries its events);
    with `--rounds 1` the failure is raised."""
    done = len(publish.read_log(bundles))
    n = 0
    while rounds is None or n < rounds:
        start = time.time()
        try:
            rec = run_round(bundles, feedback, cfg, round_no=done + n, serve_pid=serve_pid)
        except Exception as e:  # a long-running loop outlives one failed round (the store, Ray); it is reported
            if rounds is not None and rounds == 1:
                raise
            rec = {"round": done + n, "decision": "error", "reason": f"{type(e).__name__}: {e}"}
        print(json.dumps(rec if rec is not None else {"round": done + n, "decision": "skipped",
                                                       "reason": f"fewer than {cfg.min_events} new events"},
                         default=str), file=out, flush=True)
        n += 1
        if rounds is not None and n >= rounds:
            break
        time.sleep(max(0.0, every_min * 60 - (time.time() - start)))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundles", required=True, help="the directory holding the versions and the `current` link")
    p.add_argument("--feedback", required=True, help="the serving feedback store (SQLite path or PostgreSQL DSN)")
    p.add_argument("--every", type=float, default=10.0, help="minutes between round starts")
    p.add_argument("--rounds", type=int, help="stop after N rounds (default: run until stopped)")
    p.add_argument("--serve-pid", type=int, help="the `prefmine serve` process to SIGHUP after a roll-in")
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree; its `update` section applies")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="UpdateConfig overrides")


def run_cli(args) -> int:
    try:
        cfg = train_config.load(args.preset, args.config, train_config.in_section("update", args.set)).update
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        publish.current_version(args.bundles)
    except FileNotFoundError as e:
        print(f"error: --bundles: {e}", file=sys.stderr)
        return 2
    if args.every <= 0 or (args.rounds is not None and args.rounds < 1):
        print("error: --every must be > 0 and --rounds >= 1", file=sys.stderr)
        return 2
    return loop(args.bundles, args.feedback, args.every, args.rounds, cfg, args.serve_pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.update_loop", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
