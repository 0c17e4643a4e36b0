"""Incremental policy update from serving feedback: serving bundle + new feedback events -> a NEW bundle version.

What it does, in order:

1. Reads the serving bundle's manifest: `components.policy.feedback_consumed_id` is the id of the last feedback
   event an earlier update consumed (0: none yet). Reads every later event from the FeedbackLog (SQLite, paged
   by id; serving may keep writing meanwhile: events after the last id read stay for the next run).
2. Applies what the events change. Interactions (click, cart, buy, rate) on catalogue items extend the user's
   history (once per user and item; a pseudonym not in the catalogue starts a new history) and the item's
   popularity count; `view` is counted only (an impression, not an interaction); events on unknown items are
   skipped and counted. Purchase given click is updated per item as a Beta posterior: the serving policy's
   simulator purchase rate (`policy/response_model.npz`) weighs `buy_prior` pseudo-counts against the events
   (a buy, or a rating >= 4, is a purchase; any interaction is a click), the same definition as at first fit.
3. Refits the response model on the updated histories (each user's last item is the next-item target). With
   `ranker` on (UpdateConfig), fine-tunes the serving ranker's weights on the updated histories for
   `ranker_steps` steps at `ranker_lr` (prefmine.update.ranker, in process) into the new version's own `ranker/`
   and rebuilds its retrieval index; `components.ranker` records the parent version, the steps and the loss
   before and after. The simulator's user states and item vectors come from the new version's ranker.
4. Continues training from the serving policy's exported weights (`train_policy(..., warm_start=...)`: same
   algorithm, network and observation normalisation; DQN starts at a lower epsilon) for a short budget.
5. Writes a new bundle version directory beside the old one (or `--out`): model files hard-linked where the
   filesystem allows (they are read-only), catalogue histories and popularity rewritten, the new policy, and
   the manifest last (sealed: every file's sha256, see prefmine.integrity), with `parent_version` and the
   consumed feedback id; the whole directory is assembled under a temporary name and renamed into place, so
   nothing half-written ever looks like a bundle.

Between 4 and 5 the updated policy goes through the same gate as a freshly trained one
(`cluster.train_policy.gate_trained_policy`): against greedy, popularity and a tuned mix on the simulator just
refitted, `gate_sessions` sessions per policy (UpdateConfig; 0: the serving policy's `gate_sessions`) on the
serving policy's seed. The new version carries its own `policy/gate.json` (serving reads it exactly as it reads a
trained bundle's) and `components.policy.gate` with the update's lineage; the parent's gate judged the parent's
policy and is never carried over.

Fewer than `min_events` new events: nothing is written and the summary says so. The serving bundle is never
modified. `python -m cluster.update_policy --bundle B --feedback F [--out DIR] [--preset tiny] [--config FILE] [--set K=V ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from prefmine import train_config
from prefmine.bundle import MANIFEST, Catalog, load_catalog, new_version, read_manifest, save_catalog
from prefmine.config import ConfigError, apply
from prefmine.integrity import seal
from prefmine.policy.config import PolicyTrainConfig, UpdateConfig

INTERACTIONS = ("click", "cart", "buy", "rate")


def read_events(feedback: str | Path, after_id: int, page_size: int = 50_000) -> list[tuple]:
    """Every feedback row with id > after_id, in id order: (id, user, item, event, ts, rating)."""
    from prefmine.feedback import open_feedback_store

    log = open_feedback_store(feedback, create=False)
    try:
        rows, last = [], after_id
        while True:
            page = log.read_since(last, page_size)
            rows += page
            if len(page) < page_size:
                return rows
            last = page[-1][0]
    finally:
        log.close()


def apply_events(events: list[tuple], item_ids: np.ndarray, histories: dict[str, list[int]],
                 popularity: np.ndarray, buy_prob: np.ndarray, buy_prior: float) -> tuple[np.ndarray, dict]:
    """Update `histories` (in place) and `popularity` (in place) from events; return the new buy_prob and counts.

    The Beta posterior per item: (buy_prior * old + purchases) / (buy_prior + clicks), where every user with an
    interaction on the item is one click and a buy or a rating >= 4 by that user is one purchase.
    """
    index = {str(it): i for i, it in enumerate(item_ids)}
    clicks = np.zeros(len(item_ids))
    buys = np.zeros(len(item_ids))
    seen: set[tuple[str, int]] = set()
    bought: set[tuple[str, int]] = set()
    counts = {"events": len(events), "interactions": 0, "views": 0, "unknown_item": 0, "unknown_event": 0,
              "new_users": 0, "users": 0}
    users: set[str] = set()
    for _id, user, item, event, _ts, rating in events:
        i = index.get(str(item))
        if i is None:
            counts["unknown_item"] += 1
            continue
        if event == "view":
            counts["views"] += 1
            continue
        if event not in INTERACTIONS:
            counts["unknown_event"] += 1
            continue
        counts["interactions"] += 1
        users.add(user)
        if (user, i) not in seen:
            seen.add((user, i))
            if user not in histories:
                histories[user] = []
                counts["new_users"] += 1
            if i not in histories[user]:
                histories[user].append(i)
                popularity[i] += 1.0
            clicks[i] += 1.0
        if (event == "buy" or (event == "rate" and rating is not None and rating >= 4)) and (user, i) not in bought:
            bought.add((user, i))
            buys[i] += 1.0
    counts["users"] = len(users)
    counts["items_touched"] = int((clicks > 0).sum())
    new_buy = (buy_prior * np.asarray(buy_prob, dtype=np.float64) + buys) / (buy_prior + clicks)
    return np.clip(new_buy, 1e-6, 1 - 1e-6), counts


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def update_policy(bundle: str | Path, feedback: str | Path, out: str | Path | None = None,
                  cfg: UpdateConfig | None = None, verbose: bool = True,
                  exclude_ids: frozenset[int] = frozenset()) -> dict:
    """Run one incremental update (see the module docstring). Returns a summary with `updated`, `bundle` (the
    new version's path when updated), `version`, `consumed_id`, the event counts and, when updated, `serves`
    (what the new version's gate chose) and `gate` (the decision with its figures). `exclude_ids`: feedback ids
    not learned from (the update loop's held-out events); they still count as consumed."""

    from cluster.train_policy import gate_trained_policy, train_policy
    from prefmine.policy.response import fit_response_model, load_response
    from prefmine.policy.simulator import SimulatorConfig, SimulatorInputs
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.update.ranker import update_ranker_dir

    cfg = cfg or UpdateConfig()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    pol_dir = bundle / "policy"
    if not (pol_dir / "policy_config.json").is_file():
        raise FileNotFoundError(f"{bundle}: no policy/policy_config.json to continue from")
    pol_conf = json.loads((pol_dir / "policy_config.json").read_text())
    after = int(manifest.get("components", {}).get("policy", {}).get("feedback_consumed_id", 0))
    events = read_events(feedback, after, cfg.page_size)
    summary = {"updated": False, "parent": str(bundle), "parent_version": manifest.get("version"),
               "consumed_from": after, "new_events": len(events)}
    if len(events) < cfg.min_events:
        summary["consumed_id"] = after
        summary["reason"] = f"{len(events)} new feedback events < min_events {cfg.min_events}"
        return summary
    last_id = int(events[-1][0])
    t0 = time.time()
    # erased people (the tombstone list beside the feedback store, prefmine/data/tombstones.py) are neither
    # learned from nor copied into the new version's histories
    from prefmine.data.tombstones import default_location, open_list

    where = default_location(feedback)
    erased = open_list(where).load() if where else frozenset()  # a file, or a table beside PostgreSQL
    events = [e for e in events if e[1] not in erased and int(e[0]) not in exclude_ids]
    summary["held_out"] = len(exclude_ids)

    # 2. what the events change
    catalog = load_catalog(bundle)
    items = catalog.items
    histories = {u: [int(i) for i in s] for u, s in catalog.histories.items() if u not in erased}
    summary["erased_users_dropped"] = len(catalog.histories) - len(histories)
    popularity = catalog.popularity.astype(np.float64)
    old_resp_path = pol_dir / "response_model.npz"
    old_buy = load_response(old_resp_path).buy_prob if old_resp_path.is_file() else np.full(len(items), 0.6)
    buy_prob, counts = apply_events(events, items["item"].to_numpy(), histories, popularity, old_buy,
                                    cfg.buy_prior)
    summary["counts"] = counts

    # 3. refit the response model and the simulator on the updated logs
    users = [u for u, h in histories.items() if len(h) >= 1]
    seqs = [np.asarray(histories[u], dtype=np.int64) for u in users]
    fit_seqs = [s[:-1] for s in seqs]
    nxt = np.asarray([s[-1] if len(s) >= 2 else -1 for s in seqs], dtype=np.int64)
    response = fit_response_model(fit_seqs, nxt, len(items), seed=int(pol_conf["train"].get("seed", 0)))
    response.buy_prob = buy_prob

    # 4. continue training the serving policy
    train = dict(pol_conf["train"])
    train["hiddens"] = tuple(train["hiddens"])
    base = PolicyTrainConfig()
    pcfg = apply(base, {k: v for k, v in train.items() if hasattr(base, k)}, "serving policy config")
    pcfg = apply(pcfg, {"max_iterations": cfg.max_iterations, "time_budget_s": cfg.time_budget_s,
                        "initial_epsilon": cfg.initial_epsilon, "epsilon_timesteps": cfg.epsilon_timesteps,
                        "learning_starts": cfg.learning_starts, "seed": pcfg.seed + cfg.seed_offset})
    sim_cfg = SimulatorConfig(**pol_conf["simulator"])

    # 5. the new bundle version, assembled aside and renamed into place
    version = f"{new_version(manifest.get('data_hash') or 'nodata')}-fb{last_id}"
    out = Path(out) if out is not None else bundle.parent / version
    if out.exists():
        raise FileExistsError(f"update_policy: {out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for entry in bundle.iterdir():
            if entry.name in (MANIFEST, "policy", "catalog", "reports") or entry.name.startswith("."):
                continue
            if entry.is_dir():
                _link_or_copy_tree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        shutil.copytree(bundle / "catalog", tmp / "catalog")  # real copies: rewritten below
        save_catalog(tmp, Catalog(items, histories, popularity))
        ranker_update = None
        if cfg.ranker:  # the ranker fine-tuned on the updated histories; its model.pt replaced, never written through
            ranker_update = update_ranker_dir(tmp / "ranker", seqs, cfg.ranker_update(),
                                              _retrieval_config(manifest))
        ranker = RankerRuntime(tmp)  # the simulator sees the candidate's own ranker, as serving will
        inputs = SimulatorInputs(user_states=ranker.user_states(seqs).astype(np.float32),
                                 item_vectors=np.asarray(ranker.item_vectors, dtype=np.float32),
                                 item_popularity=popularity, user_histories=seqs, response=response,
                                 blend=ranker.blend)  # candidates scored as serving scores them
        metrics = train_policy(inputs, tmp / "policy", pcfg, sim_cfg, verbose=verbose, warm_start=pol_dir)
        # the gate, as after training: on the refitted simulator, on the serving policy's seed (its own sessions)
        gate_seed = int(pol_conf["train"].get("seed", 0))
        gate = gate_trained_policy(inputs, tmp / "policy", cfg.gate_sessions or pcfg.gate_sessions, seed=gate_seed,
                                   verbose=verbose)
        parent_comp = manifest.get("components", {}).get("policy", {})
        lineage = {"by": "update_policy", "parent_version": manifest.get("version"),
                   "parent_served": (parent_comp.get("gate") or {}).get("served"), "feedback_consumed_id": last_id}
        comp = dict(parent_comp)
        comp.update({"algorithm": pcfg.algorithm, "feedback_consumed_id": last_id,
                     "gate": {**gate["manifest_entry"], "lineage": lineage},
                     "update": {"parent_version": manifest.get("version"), "consumed_from": after,
                                "counts": counts, "config": vars_of(cfg), "seconds": round(time.time() - t0, 1)},
                     "metrics": {k: v for k, v in metrics.items() if k != "history"}})
        components = {**manifest.get("components", {}), "policy": comp}
        if ranker_update is not None:
            components["ranker"] = ranker_lineage(components.get("ranker", {}), manifest.get("version"),
                                                  ranker_update)
        new_manifest = {**manifest, "version": version, "parent_version": manifest.get("version"),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "components": components}
        new_manifest.pop("metrics", None)  # the parent's evaluation does not describe this version
        seal(tmp, new_manifest)  # the new files' digests (and signature); written last: now a finished bundle
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.update({"updated": True, "bundle": str(out), "version": version, "consumed_id": last_id,
                    "seconds": round(time.time() - t0, 1), "train": {k: v for k, v in metrics.items()
                                                                     if k != "history"},
                    "serves": gate["decision"]["served"], "ranker": ranker_update,
                    "gate": {**gate["decision"], "sessions": gate["sessions"], "lineage": lineage}})
    return summary


def _retrieval_config(manifest: dict):
    """The retrieval settings the bundle was trained with (its manifest's config tree), else the defaults."""
    from prefmine.ranker.retrieval import RetrievalConfig

    saved = (manifest.get("config") or {}).get("retrieval") or {}
    return RetrievalConfig.from_dict(saved, "the bundle's config.retrieval", ignore_unknown=True)


def ranker_lineage(parent_comp: dict, parent_version: str | None, record: dict) -> dict:
    """The candidate's `components.ranker`: the parent's entry without its training metrics (they describe the
    parent's weights), the parent version and the fine-tune's record (steps, loss before and after, index)."""
    comp = {k: v for k, v in parent_comp.items() if k not in ("metrics", "update")}
    comp.update({"parent_version": parent_version, "update": {"by": "update_policy", **record}})
    return comp


def vars_of(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.update_policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="the serving bundle (read only)")
    p.add_argument("--feedback", required=True, help="the serving feedback log (SQLite)")
    p.add_argument("--out", help="where the new bundle version goes (default: beside --bundle, named by version)")
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree (prefmine.train_config); its `update` section applies")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="UpdateConfig overrides (KEY or update.KEY)")
    args = p.parse_args(argv)
    try:
        cfg = train_config.load(args.preset, args.config, train_config.in_section("update", args.set)).update
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in (("--bundle", Path(args.bundle) / MANIFEST), ("--feedback", Path(args.feedback))):
        if not path.is_file():
            print(f"error: {name}: {path} does not exist", file=sys.stderr)
            return 2
    summary = update_policy(args.bundle, args.feedback, args.out, cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
