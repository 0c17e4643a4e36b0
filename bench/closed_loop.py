"""The feedback loop, live: simulated users drive the real gRPC service while the update loop rolls versions in.

    python -m bench.closed_loop [--bundle BUNDLE] [--rounds 4] [--sessions-per-round 2000] [--quick] [--out F] [--plan]

Serves a copy of BUNDLE (default: the tiny preset trained on Magazine 5-core here) as `BUNDLES/current` with the
`prefmine serve` code path (its own local Ray, API key required, loopback only, a SQLite feedback store) and an
A/B experiment of two arms split by the user hash: `control` serves the first version, pinned
(`bundle: BUNDLES/v0`: whatever rounds roll in, its users are answered by that version), in the ranker's order
(greedy), and the bench checks from the impression log that every control answer came from it; the loop runs
with `ranker=false` unless `--set ranker=true` (then the learning arm's versions also get fine-tuned rankers;
the bench records whether every rolled-in version's ranker files are byte-identical to the first), and `learning` serves the learned policy each round trains further (or, with
`--learning-policy bundle`, whatever each version's gate chose). Users of the data, with the calibrated
simulator's response model (prefmine/closed_loop.py), run sessions from `--concurrency` client threads: every
Recommend, click and purchase goes through the API, each event naming its impression. After each
`--sessions-per-round` sessions the update loop runs one round as a subprocess (`cluster.update_loop --rounds 1
--serve-pid`) while the clients go on at a slower pace (at most another block), so that requests are timed during
each rollout; a rolled-in version counts once ModelInfo reports it. After the last round one more block of
sessions is run, then everything started is stopped.

Writes per arm the sessions, per-impression click and purchase rates with Wilson 95% intervals (overall and per
round), the arm figures `prefmine experiments report` computes from the server's own logs, failed requests,
versions rolled in and refused (with the guard's reasons), Recommend latency percentiles during rollouts (SIGHUP
to ModelInfo reporting the new version) and outside them, and the verdict: the learning arm beats the control
only when its CTR interval lies wholly above the control's. The control arm is the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import ROOT, add_common, data_root, default_out, print_plan, require
from bench.loop_service import Server, VersionWatch, child_env, rollout_seconds, wait_version

MAGAZINE = ("amazon2018", "Magazine_Subscriptions", "Magazine_Subscriptions_5.json.gz")
ROUND_PACE_S = 1.0  # while a round trains, each client thread rests this long between sessions (background)
ROUND_CAP = 1000  # sessions during one round at most (a hard bound; the pace keeps far below it)
EXPERIMENT = {"name": "closed-loop", "salt": "closed-loop-bench"}


def magazine_file() -> Path:
    return data_root().joinpath(*MAGAZINE)


def train_default_bundle(work: Path) -> Path:
    """The tiny preset trained on Magazine 5-core (prepared as bench.policy prepares it) in `work`."""
    from bench.policy import _default_data

    data = _default_data(work / "data")
    out = work / "trained"
    subprocess.run([sys.executable, "-m", "prefmine.cli", "train", "--data", str(data), "--out", str(out),
                    "--preset", "tiny"], cwd=ROOT, env=child_env(), check=True)
    return out


def raw_users(manifest: dict) -> list[str]:
    """The raw user ids of the Amazon 5-core file the bundle's data came from, in file order, once each."""
    import gzip

    ds = manifest.get("dataset", {})
    if ds.get("source", "amazon2018") != "amazon2018":
        raise SystemExit(f"error: bench.closed_loop draws users from Amazon 5-core data, not {ds.get('source')!r}")
    category = ds.get("category", MAGAZINE[1])
    path = data_root() / "amazon2018" / category / f"{category}_5.json.gz"
    require([path])
    seen: dict[str, None] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            seen.setdefault(json.loads(line)["reviewerID"], None)
    return list(seen)


def population(bundle: Path, cfg):
    """Users of the data with their catalogue histories and the bundle's fitted response model."""
    from prefmine.bundle import Bundle
    from prefmine.closed_loop import Population
    from prefmine.policy.response import load_response

    b = Bundle.load(bundle)
    if not b.key_matches:
        raise SystemExit("error: the pseudonymisation key does not match the bundle's (a tiny test bundle needs "
                         "PREFMINE_PSEUDONYM_KEY=prefmine-test-key)")
    histories = {}
    for raw in raw_users(b.manifest):
        h = b.history(b.pseudonymise(raw))
        if len(h):
            histories[raw] = [int(i) for i in h]
    return Population(load_response(bundle / "policy" / "response_model.npz"), b.item_ids, histories, cfg)


def ranker_digest(version_dir: Path) -> str:
    """sha256 over the ranker's files (names and bytes): equal digests, the same ranker."""
    h = hashlib.sha256()
    for name in ("ranker", "ranker_id_only"):
        for f in sorted((version_dir / name).rglob("*")) if (version_dir / name).is_dir() else []:
            if f.is_file():
                h.update(str(f.relative_to(version_dir)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


class Traffic:
    """Client threads running sessions against the server until told to stop; every request timed."""

    def __init__(self, addr: str, api_key: str, pop, seed: int, concurrency: int):
        self.addr, self.api_key, self.pop, self.seed, self.concurrency = addr, api_key, pop, seed, concurrency
        self.lock = threading.Lock()
        self.next_session = 0
        self.budget = 0  # sessions may start while next_session < budget (the main thread raises it)
        self.finished = 0  # sessions over, failed ones included
        self.paced = False  # during a round: each thread waits ROUND_PACE_S after a session
        self.done: list[tuple[int, int, str, list]] = []  # (session no, round at its start, user, outcomes)
        self.latency: list[tuple[float, float]] = []  # (start, ms) of every Recommend
        self.failed: list[str] = []
        self.round = 0
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self.threads.append(t)

    def wait_budget(self) -> None:
        """Until every session the budget allows is over (or every thread has stopped)."""
        while any(t.is_alive() for t in self.threads):
            with self.lock:
                if self.finished >= self.budget:
                    return
            time.sleep(0.5)

    def _run(self) -> None:
        import grpc
        import numpy as np

        from prefmine.closed_loop import Slate
        from prefmine.v1 import recommender_pb2 as pb
        from prefmine.v1 import recommender_pb2_grpc as pb_grpc

        md = (("x-api-key", self.api_key),)
        kinds = {"click": pb.EVENT_TYPE_CLICK, "buy": pb.EVENT_TYPE_BUY}
        with grpc.insecure_channel(self.addr) as channel:
            stub = pb_grpc.RecommenderStub(channel)

            def recommend(user, k, exclude):
                t0 = time.time()
                try:
                    resp = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, exclude_item_ids=exclude),
                                          timeout=30, metadata=md)
                except grpc.RpcError as e:
                    with self.lock:
                        self.failed.append(f"Recommend {e.code().name}: {e.details()}")
                    raise
                with self.lock:
                    self.latency.append((t0, (time.time() - t0) * 1000.0))
                return Slate(resp.impression_id, resp.arm, [it.item_id for it in resp.items])

            def feedback(user, outcome):
                now = int(time.time())
                events = [pb.Event(user_id=user, item_id=i, type=kinds[kind], timestamp=now,
                                   impression_id=outcome.impression_id)
                          for kind, items in (("click", outcome.clicks), ("buy", outcome.buys)) for i in items]
                try:
                    stub.RecordFeedback(pb.RecordFeedbackRequest(events=events), timeout=30, metadata=md)
                except grpc.RpcError as e:
                    with self.lock:
                        self.failed.append(f"RecordFeedback {e.code().name}: {e.details()}")
                    raise

            while not self.stop_event.is_set():
                with self.lock:
                    n, rnd, go = self.next_session, self.round, self.next_session < self.budget
                    self.next_session += go
                if not go:
                    self.stop_event.wait(0.2)
                    continue
                rng = np.random.default_rng([self.seed, n])
                user = self.pop.draw(rng)
                try:
                    outcomes = self.pop.session(user, recommend, feedback, rng)
                except grpc.RpcError:
                    outcomes = None  # counted in `failed`; the session is not tallied
                with self.lock:
                    self.finished += 1
                    if outcomes is not None:
                        self.done.append((n, rnd, user, outcomes))
                if self.paced:
                    self.stop_event.wait(ROUND_PACE_S)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=120)


def run_round(bundles: Path, feedback: Path, server: Server, preset: str, sets: list[str]) -> dict:
    """One update-loop round as a subprocess (`--rounds 1 --serve-pid`); its JSON record (or an error record)."""
    argv = [sys.executable, "-m", "cluster.update_loop", "--bundles", str(bundles), "--feedback", str(feedback),
            "--rounds", "1", "--every", "1", "--serve-pid", str(server.proc.pid), "--preset", preset]
    argv += ["--set", "ranker=false", *sets]  # policy rounds only, unless --set ranker=true (control is pinned)
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # the bench is stopped: the round goes with it, its own Ray included
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"decision": "error", "reason": f"exit {proc.returncode}: {stderr[-2000:]}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle to start from (default: train the tiny preset on Magazine 5-core)")
    p.add_argument("--quick", action="store_true", help="one round, 30 sessions a block (a smoke run)")
    p.add_argument("--rounds", type=int, default=None, help="update-loop rounds (default 4; --quick 1)")
    p.add_argument("--sessions-per-round", type=int, default=None,
                   help="sessions before each round and after the last (default 2000; --quick 30)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads running sessions")
    p.add_argument("--pages", type=int, default=None,
                   help="slates per session at most (default: as many as the bundle's simulator max_steps fill)")
    p.add_argument("--k", type=int, default=None, help="items per slate (default: the bundle's simulator slate_size)")
    p.add_argument("--learning-policy", choices=["learned", "bundle"], default="learned",
                   help="the learning arm serves the learned policy, or each version's gate choice (`bundle`)")
    p.add_argument("--preset", default="tiny", help="update-loop preset (its `update` section)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="update-loop UpdateConfig overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the versions, feedback store and logs go (default: a temp dir)")
    add_common(p, "closed_loop")
    a = p.parse_args(argv)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 4)
    per_round = a.sessions_per_round if a.sessions_per_round is not None else (30 if a.quick else 2000)
    if rounds < 1 or per_round < 1 or a.concurrency < 1:
        raise SystemExit("error: --rounds, --sessions-per-round and --concurrency must be >= 1")
    out = Path(a.out) if a.out else default_out("closed_loop", a.quick)
    if a.bundle:
        bundle = Path(a.bundle).resolve()
        require([bundle / "manifest.json", bundle / "policy" / "response_model.npz"],
                "--bundle must be a bundle directory with a policy (prefmine train --out)")
        inputs = []
    else:
        bundle = None
        inputs = [magazine_file()]
        require(inputs)
    max_sessions = (rounds + 1) * per_round + rounds * ROUND_CAP  # the blocks, plus what runs during the rounds
    if a.plan:
        return print_plan("closed_loop", bundle=bundle or "train the tiny preset on Magazine 5-core",
                          inputs=inputs, rounds=rounds, sessions_per_round=per_round, max_sessions=max_sessions,
                          concurrency=a.concurrency, learning_policy=a.learning_policy, out=out)
    return run(a, bundle, rounds, per_round, max_sessions, out)


def run(a, bundle: Path | None, rounds: int, per_round: int, max_sessions: int, out: Path) -> int:
    import platform
    from dataclasses import asdict

    from bench.data_scale import machine
    from prefmine.closed_loop import ArmTally, PopulationConfig, percentiles, split_by_windows, verdict
    from prefmine.experiments import load_experiment, report
    from prefmine.feedback import open_feedback_store
    from prefmine.update.publish import read_log
    from serve.auth import hash_key

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench stops its server and round first
    t_start = time.time()
    load_at_start = os.getloadavg()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="pm-closed-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = bundle or train_default_bundle(work)
    bundles = work / "bundles"
    if bundles.exists():
        shutil.rmtree(bundles)
    bundles.mkdir()
    shutil.copytree(bundle, bundles / "v0")
    (bundles / "current").symlink_to("v0")
    feedback = work / "feedback.sqlite"
    feedback.unlink(missing_ok=True)
    api_key = secrets.token_hex(16)
    keys = work / "keys.txt"
    keys.write_text(f"bench * {hash_key(api_key)}\n")
    learning = {"name": "learning"} if a.learning_policy == "bundle" else {"name": "learning", "policy": "learned"}
    experiment = work / "experiment.json"
    control = {"name": "control", "policy": "greedy", "bundle": str(bundles / "v0")}  # pinned: frozen
    experiment.write_text(json.dumps({**EXPERIMENT, "arms": [control, learning]}))
    sim = json.loads((bundles / "v0" / "policy" / "policy_config.json").read_text())["simulator"]
    pop_cfg = PopulationConfig.like_simulator(sim, a.k, a.pages)  # sessions like those the policy gate compares
    pop = population(bundles / "v0", pop_cfg)
    first_ranker = ranker_digest(bundles / "v0")
    first_version = json.loads((bundles / "v0" / "manifest.json").read_text())["version"]

    server = Server(bundles / "current", keys, feedback, experiment, work / "serve.log")
    records, rollouts, control_frozen = [], [], True
    traffic = watch = None
    try:
        ready_s = server.wait_ready()
        print(f"closed_loop: server ready on {server.addr} in {ready_s:.0f} s; {len(pop.users)} users", flush=True)
        traffic = Traffic(server.addr, api_key, pop, a.seed, a.concurrency)
        traffic.budget = per_round
        traffic.start(a.concurrency)
        watch = VersionWatch(server.addr, api_key, bundles)
        for r in range(rounds):
            traffic.wait_budget()
            with traffic.lock:  # background traffic while the candidate trains; full traffic once it is judged
                traffic.paced, traffic.budget = True, traffic.next_session + ROUND_CAP
            t0 = time.time()
            watch.expect_candidate(traffic)
            rec = run_round(bundles, feedback, server, a.preset, a.set)
            rec["wall_s"] = round(time.time() - t0, 1)
            if rec.get("decision") == "rolled_in":
                version = rec["candidate_version"]
                rec["reported_by_model_info"] = wait_version(server.addr, api_key, version)
                t_seen = watch.first_seen(version) or time.time()
                took = rollout_seconds(server.log_path, version)
                rollouts.append((t_seen - (took if took is not None else 5.0), t_seen))
                rec["rollout_s"] = took
                control_frozen &= ranker_digest(bundles / version) == first_ranker
            records.append(rec)
            print(f"closed_loop: round {r}: {rec.get('decision')} {rec.get('candidate_version')}: "
                  f"{rec.get('reason')} ({rec['wall_s']} s)", flush=True)
            with traffic.lock:  # sessions from here on were served by what this round left serving
                traffic.round, traffic.paced, traffic.budget = r + 1, False, traffic.next_session + per_round
        traffic.wait_budget()
    finally:
        if watch is not None:
            watch.stop()
        if traffic is not None:
            traffic.stop()
        server.stop()

    arms: dict[str, ArmTally] = {}
    by_round: dict[str, dict[int, ArmTally]] = {}
    for _n, rnd, user, outcomes in traffic.done:
        if not outcomes:
            continue
        arm = outcomes[0].arm
        arms.setdefault(arm, ArmTally()).add_session(outcomes, user)
        by_round.setdefault(arm, {}).setdefault(rnd, ArmTally()).add_session(outcomes, user)
    arm_figures = {name: {**t.summary(), "per_round": {str(r): by_round[name][r].summary()
                                                       for r in sorted(by_round[name])}}
                   for name, t in sorted(arms.items())}
    store = open_feedback_store(str(feedback), create=False)
    try:
        served_report = report(store, load_experiment(experiment))
        control_versions = sorted({i.bundle_version for i in store.read_impressions_since(0, limit=10_000_000)
                                   if i.arm == "control"})
    finally:
        store.close()
    during, outside = split_by_windows(traffic.latency, rollouts)
    log = read_log(bundles)
    result = {
        "bench": "closed_loop",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {**machine(), "python": platform.python_version(), "load_at_start": load_at_start,
                    "load_at_end": os.getloadavg()},
        "bundle": str(bundle),
        "settings": {"rounds": rounds, "sessions_per_round": per_round, "concurrency": a.concurrency,
                     "pages": pop_cfg.pages, "k": pop_cfg.k, "population": asdict(pop_cfg),
                     "learning_policy": a.learning_policy, "preset": a.preset,
                     "set": a.set, "seed": a.seed, "max_sessions": max_sessions, "quick": a.quick},
        "baseline": "the control arm: the first version (pinned) in the ranker's order (greedy)",
        "experiment": json.loads(experiment.read_text()),
        "arms": arm_figures,
        "served_report": served_report["arms"],  # the server's own impression log joined to its feedback
        "failed_requests": len(traffic.failed),
        "failures": traffic.failed[:20],
        "versions_rolled_in": sum(r.get("decision") == "rolled_in" for r in records),
        "versions_refused": sum(r.get("decision") == "refused" for r in records),
        "rounds": [{k: r.get(k) for k in ("round", "decision", "reason", "serving_version", "candidate_version",
                                          "new_events", "impressions", "differences", "skipped", "wall_s",
                                          "rollout_s", "reported_by_model_info")} for r in records],
        "guard_log_lines": len(log),
        "control_ranker_unchanged": control_frozen,
        "control_answered_by": control_versions,  # the pinned first version only
        "first_version": first_version,
        "latency_ms": {"during_rollouts": percentiles(during), "outside_rollouts": percentiles(outside)},
        "verdict": verdict(arm_figures, "learning", "control") if {"learning", "control"} <= set(arm_figures)
        else {"learning_beats_control": False, "reason": "an arm got no sessions"},
        "workdir": str(work),
        "seconds": round(time.time() - t_start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("failed_requests", "versions_rolled_in", "versions_refused",
                                            "verdict", "latency_ms")}, indent=2, default=str))
    for name, fig in arm_figures.items():
        print(f"{name:<10} sessions {fig['sessions']:>5} CTR {fig['ctr']:.4f} {fig['ctr_ci95']} "
              f"buy {fig['purchase_rate']:.4f} {fig['purchase_rate_ci95']} "
              f"return/session {fig['return_per_session']:.3f} {fig['return_per_session_ci95']}")
    print(f"wrote {out}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
