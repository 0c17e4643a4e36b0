"""The update loop's guard and roll-in (cluster/update_loop.py, prefmine/update/) on a real bundle and a real
SQLite feedback store with logged impressions.

Users click what the serving version (the ranker's order) shows first, and return to it as their next
interaction. A candidate that serves the popularity heuristic instead (a real, different policy in a real sealed
bundle) must be refused; a candidate with the serving version's own policy must be rolled in, with the guard log,
the manifest lineage and the `current` link checked. A round with too few new events writes nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefmine.feedback import FeedbackEvent, FeedbackLog, Impression

TS = 1_700_000_000
N_USERS = 40


def _copy_version(serving: Path, out: Path, serve: str | None, version: str) -> None:
    """A sealed copy of `serving` at `out` with manifest version `version`; `serve`: the policy its gate.json
    makes it serve."""
    from prefmine.bundle import read_manifest
    from prefmine.integrity import seal

    shutil.copytree(serving, out)
    if serve is not None:
        gate = json.loads((out / "policy" / "gate.json").read_text())
        gate["served"] = serve
        gate["reason"] = "made to serve this on purpose by the test"
        (out / "policy" / "gate.json").write_text(json.dumps(gate))
    manifest = read_manifest(out)
    seal(out, {**manifest, "version": version, "parent_version": manifest["version"]})


def _builder(serve: str | None, given: list | None = None):
    def build(serving, feedback, out, cfg, held):
        if given is not None:
            given.append(held)
        from cluster.update_policy import read_events

        last = read_events(feedback, 0)[-1][0]
        version = f"candidate-{serve or 'same'}-fb{last}"
        _copy_version(Path(serving), Path(out), serve, version)
        return {"updated": True, "version": version, "consumed_id": int(last)}
    return build


@pytest.fixture(scope="module")
def loop_setup(bundle_path, tmp_path_factory):
    """A bundles directory whose `current` is a copy of the session bundle, and a feedback store where each of
    N_USERS users saw the ranker's top 10 (one impression, propensity 1) and clicked its first item."""
    from prefmine.ranker.runtime import RankerRuntime

    root = tmp_path_factory.mktemp("loop")
    bundles = root / "bundles"
    bundles.mkdir()
    _copy_version(bundle_path, bundles / "v0", "greedy", "v0")  # the ranker's order, whatever the gate chose
    (bundles / "current").symlink_to("v0")
    hist = pd.read_parquet(bundle_path / "catalog" / "histories.parquet")
    items = pd.read_parquet(bundle_path / "catalog" / "items.parquet")["item"].astype(str).tolist()
    users = [u for u, s in zip(hist["user"], hist["items"]) if len(s) >= 2][:N_USERS]
    seqs = [list(map(int, hist.set_index("user").loc[u, "items"])) for u in users]
    top, _ = RankerRuntime(bundle_path).top_n(seqs, 10, [list(s) for s in seqs])
    log = FeedbackLog(root / "feedback.sqlite")
    for n, (u, row) in enumerate(zip(users, top)):
        shown = [items[int(i)] for i in row]
        log.append_impression(Impression(f"imp-{n}", u, TS + n, shown, list(range(10)), [1.0] * 10, "greedy",
                                         "v0"))
        log.append([FeedbackEvent(u, shown[0], "click", TS + n + 1, impression_id=f"imp-{n}")])
    log.close()
    return bundles, root / "feedback.sqlite"


def test_loop_refuses_worse_then_rolls_in_equal(loop_setup):
    from cluster.update_loop import run_round
    from prefmine.bundle import read_manifest
    from prefmine.policy.config import UpdateConfig
    from prefmine.update.publish import current_version, read_log

    bundles, feedback = loop_setup
    cfg = UpdateConfig(guard_n_boot=200)

    # 1. a candidate that orders by popularity: worse on the clicked first items; refused, current unchanged
    given: list = []
    r0 = run_round(bundles, str(feedback), cfg, round_no=0, build=_builder("popularity", given))
    assert r0["decision"] == "refused" and "worse than serving" in r0["reason"]
    store = FeedbackLog(feedback)
    clicks = store.read_since(0)  # (id, user, item, event, ts, rating), one click per user
    store.close()
    # each user's one click is their held-out event: the candidate is built without it
    assert given == [frozenset(int(row[0]) for row in clicks)] and r0["held_out"] == N_USERS
    assert current_version(bundles) == (bundles / "v0").resolve()
    assert sorted(p.name for p in bundles.iterdir()) == ["current", "guard_log.jsonl", "v0"]  # refused: removed
    assert set(r0["figures"]) == {"serving", "candidate"} and r0["impressions"] == N_USERS
    worse = [m for m, d in r0["differences"].items() if d["ci95"][0] < -d["tolerance"]]
    assert worse and all(m in r0["reason"] for m in worse)
    # serving showed what was clicked at position 0: its SNIPS is the logged per-slot click rate
    assert r0["figures"]["serving"]["snips"]["value"] == pytest.approx(1 / 10)

    # 2. nothing new since round 0: nothing is written
    assert run_round(bundles, str(feedback), cfg, round_no=1, build=_builder(None)) is None
    assert len(read_log(bundles)) == 1

    # 3. new feedback; a candidate with the serving policy: every difference is 0, rolled in
    log = FeedbackLog(feedback)
    u, item = log.read_since(0)[0][1], log.read_since(0)[0][2]
    last = log.append([FeedbackEvent(u, item, "buy", TS + 1000)])
    log.close()
    given.clear()
    r1 = run_round(bundles, str(feedback), cfg, round_no=1, build=_builder(None, given))
    assert r1["decision"] == "rolled_in" and r1["new_events"] == 1 and r1["examined_id"] == last
    # the user who bought what they clicked has no next-item event (a repeat); every other click is held out
    held = [row for row in clicks if row[1] != u]
    assert given == [frozenset(int(row[0]) for row in held)] and r1["held_out"] == N_USERS - 1
    assert all(d["value"] == 0.0 for d in r1["differences"].values())
    new = current_version(bundles)
    assert new.name == r1["candidate_version"] and (bundles / "current").readlink() == Path(new.name)
    lineage = read_manifest(new)["update_loop"]
    assert lineage["parent_version"] == "v0" and lineage["feedback_consumed_id"] == last
    assert lineage["guard"]["differences"] == json.loads(json.dumps(r1["differences"]))
    assert [r["decision"] for r in read_log(bundles)] == ["refused", "rolled_in"]
    # the held-out clicks joined the rolled-in version after the guard (the test's candidate learned nothing)
    items = pd.read_parquet(new / "catalog" / "items.parquet")["item"].astype(str).tolist()
    want = np.load(bundles / "v0" / "catalog" / "popularity.npy").astype(np.float64)
    np.add.at(want, [items.index(str(row[2])) for row in held], 1.0)
    np.testing.assert_array_equal(np.load(new / "catalog" / "popularity.npy"), want)
    hist = pd.read_parquet(new / "catalog" / "histories.parquet").set_index("user")["items"]
    assert all(items[int(hist[row[1]][-1])] == str(row[2]) for row in held)
    assert lineage["held_out_learned_after_the_guard"] == N_USERS - 1


def test_an_underpowered_metric_refuses_only_what_it_shows_worse():
    """A held-out family of ~50 users (+-0.15) cannot show "not worse" at 0.01: it no longer refuses an equal
    candidate by itself, but still refuses one it shows worse; a family with the units decides as before."""
    from prefmine.update.guard import GuardRule, judge

    def d(lo, hi):
        return {"value": (lo + hi) / 2, "ci95": [lo, hi], "units": 50, "tolerance": 0.01}

    rule = GuardRule()
    wide_equal, wide_worse, tight_ok, tight_worse = d(-0.15, 0.15), d(-0.3, -0.02), d(-0.005, 0.004), d(-0.018, -0.004)
    assert judge({"ndcg@10": wide_equal, "snips": tight_ok}, [], rule)[0]
    assert not judge({"ndcg@10": wide_equal, "snips": tight_ok}, [], GuardRule(decisive_factor=0))[0]  # as before
    ok, reason = judge({"ndcg@10": wide_worse, "snips": tight_ok}, [], rule)
    assert not ok and "ndcg@10" in reason and "95% high" in reason
    assert not judge({"ndcg@10": wide_equal, "snips": tight_worse}, [], rule)[0]
    ok, reason = judge({"ndcg@10": wide_equal}, [], rule)  # nothing could decide: refused
    assert not ok and "no metric had the units" in reason


def test_loop_cli_rejects_bad_arguments(tmp_path, capsys):
    from prefmine.cli.main import main

    assert main(["update", "loop", "--bundles", str(tmp_path), "--feedback", str(tmp_path / "f.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "--bundles" in err and "no current version" in err
    (tmp_path / "v0").mkdir()
    (tmp_path / "current").symlink_to("v0")
    assert main(["update", "loop", "--bundles", str(tmp_path), "--feedback", "f", "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err
    assert main(["update", "loop", "--bundles", str(tmp_path), "--feedback", "f",
                 "--set", "guard_ope_tolerance=-1"]) == 2
    assert "guard_ope_tolerance" in capsys.readouterr().err


def test_a_failed_round_is_reported_and_the_loop_goes_on(tmp_path):
    import io

    from cluster.update_loop import loop
    from prefmine.policy.config import UpdateConfig

    (tmp_path / "v0").mkdir()  # not a finished bundle: every round fails reading it
    (tmp_path / "current").symlink_to("v0")
    out = io.StringIO()
    assert loop(str(tmp_path), str(tmp_path / "fb.sqlite"), 0.0001, 2, UpdateConfig(), out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["round"], r["decision"]) for r in records] == [(0, "error"), (1, "error")]
    assert "FileNotFoundError" in records[0]["reason"] and not (tmp_path / "guard_log.jsonl").exists()
    with pytest.raises(FileNotFoundError):
        loop(str(tmp_path), str(tmp_path / "fb.sqlite"), 0.0001, 1, UpdateConfig(), out=io.StringIO())


def test_a_live_server_takes_the_loops_round_without_a_failed_request(bundle_path, tmp_path):
    """A real server (`prefmine serve`'s code path, API key on) gets clicks over gRPC naming their impressions;
    `prefmine update loop --rounds 1 --serve-pid` builds and judges a candidate from them while a client keeps
    calling Recommend. The guard's tolerances are opened wide (1.0) so that the candidate rolls in whatever its
    figures (refusals are tested above; on this little data the guard refuses most real candidates): the link
    is repointed, the server gets SIGHUP, ModelInfo reports the candidate, and not one of the client's calls
    failed before, during or after the switch. The server runs an A/B experiment whose `control` arm pins the
    first version's directory: after the switch its users are still answered (and logged) by that version,
    the other arm's by the candidate."""
    import subprocess
    import sys
    import threading

    import grpc
    from live_server import API_KEY, keys_file_for, raw_user_ids, server_env, start_server

    from prefmine.bundle import Bundle, read_manifest
    from prefmine.experiments import assign, load_experiment
    from prefmine.update.publish import read_log
    from prefmine.v1 import recommender_pb2 as pb
    from prefmine.v1 import recommender_pb2_grpc as pb_grpc

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    shutil.copytree(bundle_path, bundles / "v0")
    (bundles / "current").symlink_to("v0")
    old = read_manifest(bundles / "v0")["version"]
    bundle = Bundle.load(bundle_path)
    known = [r for r in dict.fromkeys(raw_user_ids(bundle)) if len(bundle.history(bundle.pseudonymise(r)))]
    feedback = tmp_path / "feedback.sqlite"
    experiment = tmp_path / "experiment.json"
    experiment.write_text(json.dumps({"name": "loop-ab", "salt": "loop-ab-1", "arms": [
        {"name": "control", "bundle": str(bundles / "v0")}, {"name": "learning"}]}))
    arm = {raw: assign(bundle.pseudonymise(raw), load_experiment(experiment)).name for raw in known}
    server = start_server(bundles / "current", api_keys_file=keys_file_for(tmp_path / "keys"), feedback_db=feedback,
                          experiment=experiment)
    md = (("x-api-key", API_KEY),)
    calls, failures, stop = [0], [], threading.Event()
    try:
        with grpc.insecure_channel(server.addr) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for raw in known[:N_USERS]:  # each user clicks the top item of what they were shown
                resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=10), timeout=30, metadata=md)
                stub.RecordFeedback(pb.RecordFeedbackRequest(events=[pb.Event(
                    user_id=raw, item_id=resp.items[0].item_id, type=pb.EVENT_TYPE_CLICK,
                    timestamp=int(time.time()), impression_id=resp.impression_id)]), timeout=30, metadata=md)

            def keep_calling():
                n = 0
                while not stop.is_set():
                    try:
                        stub.Recommend(pb.RecommendRequest(user_id=known[n % len(known)], k=5), timeout=30,
                                       metadata=md)
                        calls[0] += 1
                    except grpc.RpcError as e:
                        failures.append(f"{e.code().name}: {e.details()}")
                    n += 1
                    time.sleep(0.05)

            client = threading.Thread(target=keep_calling, daemon=True)
            client.start()
            loop = subprocess.run(
                [sys.executable, "-m", "cluster.update_loop", "--bundles", str(bundles), "--feedback",
                 str(feedback), "--rounds", "1", "--every", "1", "--serve-pid", str(server.proc.pid),
                 "--set", "max_iterations=1", "gate_sessions=20", "guard_n_boot=100", "guard_ope_tolerance=1",
                 "guard_rank_tolerance=1"],
                capture_output=True, text=True, timeout=600, env=server_env(), cwd=Path(__file__).parents[1])
            assert loop.returncode == 0, loop.stderr[-3000:]
            record = json.loads(loop.stdout.strip().splitlines()[-1])
            assert record["decision"] == "rolled_in", record
            want = record["candidate_version"]
            t0, info = time.monotonic(), None
            while time.monotonic() - t0 < 120:
                info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=30, metadata=md).bundle_version
                if info == want:
                    break
                time.sleep(0.5)
            answered = {}  # after the switch: one user of each arm, answered by the arm's version
            for name in ("control", "learning"):
                raw = next(r for r in known if arm[r] == name)
                resp = stub.Recommend(pb.RecommendRequest(user_id=raw, k=5), timeout=30, metadata=md)
                answered[resp.impression_id] = (name, resp.arm, resp.bundle_version)
            calls_at_end = calls[0]
            time.sleep(1.0)  # the client goes on answering after the switch
            stop.set()
            client.join(timeout=60)
    finally:
        stop.set()
        assert server.stop() == 0
    assert record["new_events"] == N_USERS and record["impressions"] >= N_USERS  # the client's too
    assert info == want != old
    logged = read_log(bundles)[-1]
    assert logged["decision"] == "rolled_in" and logged["signalled"] == server.proc.pid
    assert (bundles / "current").resolve().name == want
    lineage = read_manifest(bundles / want)["update_loop"]
    assert lineage["parent_version"] == old and lineage["feedback_consumed_id"] == record["consumed_id"]
    assert failures == [] and calls_at_end > 0 and calls[0] > calls_at_end
    assert sorted(answered.values()) == [("control", "control", old), ("learning", "learning", want)]
    log = FeedbackLog(feedback)
    imps = {i.impression_id: (i.arm, i.bundle_version) for i in log.read_impressions_since(0)}
    log.close()
    assert {i: imps[i] for i in answered} == {i: (a, v) for i, (_, a, v) in answered.items()}


@pytest.fixture(scope="module")
def ranker_loop_setup(bundle_path, tmp_path_factory):
    """Like `loop_setup`, but every user with two or more items (not N_USERS) clicks the first two items the serving
    version showed: the second click is the user's held-out event, the first one is what the candidate's ranker
    learns from. All of them, because a ranker wrecked by a huge learning rate still ranks the clicked items well
    for some users (each one's held-out item is another's first click): on one session bundle the first 40 users
    left the wrecked candidate tied on recall@10 (1.0 each) and the guard rightly rolled it in."""
    from prefmine.ranker.runtime import RankerRuntime

    root = tmp_path_factory.mktemp("ranker-loop")
    bundles = root / "bundles"
    bundles.mkdir()
    _copy_version(bundle_path, bundles / "v0", "greedy", "v0")
    (bundles / "current").symlink_to("v0")
    hist = pd.read_parquet(bundle_path / "catalog" / "histories.parquet")
    items = pd.read_parquet(bundle_path / "catalog" / "items.parquet")["item"].astype(str).tolist()
    users = [u for u, s in zip(hist["user"], hist["items"]) if len(s) >= 2]
    seqs = [list(map(int, s)) for s in hist.set_index("user").loc[users, "items"]]
    top, _ = RankerRuntime(bundle_path).top_n(seqs, 10, [list(s) for s in seqs])
    log = FeedbackLog(root / "feedback.sqlite")
    for n, (u, row) in enumerate(zip(users, top)):
        shown = [items[int(i)] for i in row]
        log.append_impression(Impression(f"imp-{n}", u, TS + 10 * n, shown, list(range(10)), [1.0] * 10, "greedy",
                                         "v0"))
        log.append([FeedbackEvent(u, shown[0], "click", TS + 10 * n + 1, impression_id=f"imp-{n}"),
                    FeedbackEvent(u, shown[1], "click", TS + 10 * n + 2, impression_id=f"imp-{n}")])
    log.close()
    return bundles, root / "feedback.sqlite", len(users)


def _tree_digest(d: Path) -> dict:
    import hashlib

    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*"))
            if f.is_file()}


def test_loop_updates_the_ranker_and_refuses_a_diverged_one(ranker_loop_setup, ray_session):
    """Real candidates (update_policy: the ranker fine-tuned, the policy warm-started and exported as it was, so
    the ranker is what differs). One fine-tuned at an absurd learning rate (set as the command line sets it) is
    refused on the held-out events, which the guard ranks with the candidate's own ranker; one fine-tuned with
    the defaults has new weights, its lineage in the manifest, and is rolled in or refused with the figures
    logged. The serving version is never modified."""
    import torch

    from cluster.update_loop import run_round
    from cluster.update_policy import update_policy
    from prefmine import train_config
    from prefmine.bundle import read_manifest
    from prefmine.update.publish import current_version, read_log

    bundles, feedback, n_users = ranker_loop_setup
    v0 = bundles / "v0"
    before = _tree_digest(v0)
    cheap = ["max_iterations=0", "gate_sessions=2", "guard_n_boot=200", "ranker=true", "ranker_steps=30"]

    def config(*sets):
        return train_config.load("tiny", None, train_config.in_section("update", [*cheap, *sets])).update

    built: list[dict] = []

    def build(serving, fb, out, cfg, held):  # update_policy itself; what it wrote is read before the guard
        summary = update_policy(serving, fb, out, cfg, verbose=False, exclude_ids=held)
        built.append({"manifest": read_manifest(out),
                      "weights": torch.load(Path(out) / "ranker" / "model.pt", weights_only=True)})
        return summary

    r0 = run_round(bundles, str(feedback), config("ranker_lr=10"), round_no=0, build=build)
    assert r0["decision"] == "refused" and r0["held_out"] == n_users
    fig = r0["figures"]
    assert fig["candidate"]["ndcg@10"] < fig["serving"]["ndcg@10"] and "ndcg@10" in r0["reason"]
    assert current_version(bundles) == v0.resolve() and _tree_digest(v0) == before

    log = FeedbackLog(feedback)  # one more event: the next round reads the refused round's events again
    first = log.read_since(0)[0]
    log.append([FeedbackEvent(first[1], first[2], "buy", TS + 5000)])
    log.close()
    r1 = run_round(bundles, str(feedback), config(), round_no=1, build=build)
    # the user who bought what they clicked first has no next-item event (a repeat); every other is held out
    assert r1["decision"] in ("rolled_in", "refused") and r1["held_out"] == n_users - 1
    assert {"ndcg@10", "recall@10"} <= set(r1["differences"]) and set(r1["figures"]) == {"serving", "candidate"}
    assert read_log(bundles)[-1]["figures"] == json.loads(json.dumps(r1["figures"]))
    parent = torch.load(v0 / "ranker" / "model.pt", weights_only=True)
    new = built[-1]["weights"]
    assert not torch.equal(parent["item_emb.weight"], new["item_emb.weight"])
    assert all(torch.isfinite(t).all() for t in new.values() if t.is_floating_point())
    comp = built[-1]["manifest"]["components"]["ranker"]
    assert comp["parent_version"] == "v0" and comp["update"]["steps"] == 30
    assert comp["update"]["loss_after"] < comp["update"]["loss_before"]
    assert read_log(bundles)[-1]["ranker"]["loss_after"] == comp["update"]["loss_after"]
    assert comp["config"] == read_manifest(v0)["components"]["ranker"]["config"]
    assert _tree_digest(v0) == before  # the serving version is untouched
    if r1["decision"] == "rolled_in":
        assert torch.equal(torch.load(current_version(bundles) / "ranker" / "model.pt", weights_only=True)
                           ["item_emb.weight"], new["item_emb.weight"])


def test_ranker_update_replaces_linked_weights_and_rebuilds_the_index(bundle_path, tmp_path):
    """prefmine.update.ranker on a copy of a real ranker whose model.pt is a hard link to the parent's (as the
    update job links it) and which holds an index of the parent's vectors: the parent's file keeps its bytes, the
    new weights are what the directory loads, an item cold at training time that now has an interaction is warm,
    and the index is rebuilt for the new vectors (the stale one would no longer match)."""
    import os

    from prefmine.ranker.retrieval import SERVING_INDEX, ItemIndex, RetrievalConfig, write_item_index
    from prefmine.ranker.runtime import load_ranker, ranker_item_vectors
    from prefmine.update.ranker import RankerUpdate, update_ranker_dir

    parent = tmp_path / "parent"
    shutil.copytree(bundle_path / "ranker", parent)
    d = tmp_path / "candidate"
    shutil.copytree(parent, d, copy_function=os.link)
    parent_bytes = (parent / "model.pt").read_bytes()
    old = load_ranker(parent)
    ivf = RetrievalConfig(kind="ivf", nlist=4, nprobe=4)
    write_item_index(d, ranker_item_vectors(old), ivf)
    cold = np.flatnonzero(~old.warm[1:].numpy())
    assert len(cold), "the tiny bundle has items without train interactions"
    hist = pd.read_parquet(bundle_path / "catalog" / "histories.parquet")["items"]
    histories = [list(map(int, h)) for h in hist] + [[int(cold[0]), int(hist.iloc[0][0])]]

    rec = update_ranker_dir(d, histories, RankerUpdate(steps=20, lr=3e-4), ivf)
    assert (parent / "model.pt").read_bytes() == parent_bytes and not (d / "model.pt").samefile(parent / "model.pt")
    new = load_ranker(d)
    vectors = ranker_item_vectors(new)
    assert not np.allclose(vectors, ranker_item_vectors(old)) and bool(new.warm[int(cold[0]) + 1])
    assert rec["steps"] == 20 and rec["retrieval"]["kind"] == "ivf" and rec["newly_warm_items"] >= 1
    assert ItemIndex.load(d, SERVING_INDEX).matches(vectors)
