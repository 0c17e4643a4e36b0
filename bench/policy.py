"""Benchmark: the RL recommendation policies (RLlib DQN and PPO) against greedy, popularity and random.

On a prepared data set and a bundle holding its ranker (`--data`, `--bundle`; without them the Amazon
Magazine_Subscriptions 5-core data under PREFMINE_DATA_DIR is prepared and an encoder + ranker are trained
with the tiny presets into `--workdir` first), in this order:

  response_auc      the simulator's response model (fitted on train histories, the validation item as the next
                    item) ranks each user's held-out TEST item (history = train + valid) above 20 random unseen
                    items: per-user AUC, mean (0.5 = no better than random)
  env_steps_per_s   RecSimEnv.step() with uniformly random actions in one process (no RLlib); and the RLlib
                    sampling+training rate of each algorithm (env steps / training seconds)
  training          DQN and PPO from scratch, each for `--train-s` seconds; after every iteration the current
                    RLModule is evaluated greedily on `--probe-sessions` fixed sessions; `time_to_greedy_s` is
                    the training time (evaluation excluded) until that return first reaches greedy's on the same
                    sessions (null: never within the budget)
  policies          the exported policies, reloaded through PolicyRuntime (no Algorithm), and greedy top-1 from
                    the ranker, popularity and random on the same `--sessions` seeded sessions (common random
                    numbers): return_mean / ci95, ctr / ctr_ci95, conversion / conversion_ci95 (95% normal
                    intervals, sessions as units) and vs_greedy (paired difference in return and its CI);
                    oracle_myopic (reads the response model; not deployable) as a reference ceiling
  off_policy        IPS and SNIPS of each policy's first slot on the logged test interactions, with the
                    estimated propensities and caveats of `prefmine.policy.offpolicy`
  gate              each learned policy through the gate (prefmine.policy.gate.gate_policy) on `--sessions`
                    sessions of another seed: against greedy, popularity and the mix tuned on a third seed, the
                    95% intervals the gate decides on, and what the gate would serve (`gate.<policy>.decision`)
  latency           PolicyRuntime.q_values for 1 and 64 observations (p50/p95 ms over 300 calls), and a
                    k=10 slate from 50 candidates

`--networks flat per_candidate` trains DQN with each Q-network (`policy: {network}`; `dqn` is the flat one,
`dqn_per_candidate` the shared-weight one); `--seqrec Beauty` runs on the S3-Rec set under
$PREFMINE_DATA_DIR/seqrec instead of Magazine (prepared and given a tiny encoder + ranker in `--workdir` once).

    python -m bench.policy [--quick] [--data DIR --bundle DIR | --seqrec NAME] [--networks ...] [--out FILE] [--plan]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.common import add_common, data_root, default_out, print_plan, require

os.environ.setdefault("OMP_NUM_THREADS", "1")


CATEGORY = "Magazine_Subscriptions"
RAW_FILES = (f"{CATEGORY}_5.json.gz", f"meta_{CATEGORY}.json.gz")  # 5-core reviews + metadata, no ratings CSV


def _default_raw(workdir: Path) -> Path:
    """The amazon2018 folder `prepare` reads for the default run: `<workdir>/raw/amazon2018/<CATEGORY>/` holding
    links to the 5-core files under the data root (bench.common.data_root), so the ratings CSV stays out."""
    src = data_root() / "amazon2018" / CATEGORY
    require([src / name for name in RAW_FILES], "set PREFMINE_DATA_DIR, or pass --data and --bundle")
    raw = workdir / "raw" / "amazon2018"
    (raw / CATEGORY).mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        link = raw / CATEGORY / name
        if link.is_symlink() and link.resolve() != (src / name).resolve():
            link.unlink()  # a workdir left by a run on another data root
        if not link.exists():
            os.symlink((src / name).resolve(), link)
    return raw


def _default_data(workdir: Path) -> Path:
    """Magazine 5-core from the data root, prepared into `<workdir>/data` (once; kept for the next run)."""
    from prefmine.data.prepare import prepare

    data = workdir / "data"
    if not (data / "manifest.json").is_file():
        os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "prefmine-bench-key")
        prepare("amazon2018", _default_raw(workdir), data, CATEGORY)
    return data


def _prepare_default(workdir: Path) -> tuple[Path, Path]:
    """The default inputs: `_default_data`, and an encoder + ranker trained on it (tiny presets)."""
    from cluster.pipeline import train_bundle

    data, bundle = _default_data(workdir), workdir / "bundle"
    if not (bundle / "ranker" / "model.pt").is_file():
        train_bundle(data, bundle, stages=("encoder", "ranker"), preset="tiny")
    return data, bundle


def _prepare_seqrec(workdir: Path, name: str) -> tuple[Path, Path]:
    """An S3-Rec set (`<data root>/seqrec/<name>`) prepared into `<workdir>/data` and an encoder + ranker trained
    on it with the tiny presets into `<workdir>/bundle` (each once; kept for the next run)."""
    from cluster.pipeline import train_bundle
    from prefmine.data.prepare import prepare

    raw = data_root() / "seqrec"
    require([raw / name / f"{name}.txt"], "set PREFMINE_DATA_DIR")
    data, bundle = workdir / "data", workdir / "bundle"
    if not (data / "manifest.json").is_file():
        os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "prefmine-bench-key")
        prepare("seqrec", raw, data, name)
    if not (bundle / "ranker" / "model.pt").is_file():
        train_bundle(data, bundle, stages=("encoder", "ranker"), preset="tiny")
    return data, bundle


def _test_rewards(ds, purchase_value: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """(users, test items, histories = train + valid, rewards = 1 + purchase_value * [test rating >= 4])."""
    import pandas as pd

    inter = pd.read_parquet(Path(ds.path) / "interactions.parquet", columns=["user", "rating", "split"])
    rating = dict(zip(inter.loc[inter["split"] == "test", "user"], inter.loc[inter["split"] == "test", "rating"]))
    users = np.flatnonzero(ds.test_item >= 0)
    hist = [ds.history(int(u), "test") for u in users]
    r = np.array([rating.get(ds.users[u], np.nan) for u in users], dtype=np.float64)
    rewards = 1.0 + purchase_value * (np.nan_to_num(r, nan=0.0) >= 4)
    return users, ds.test_item[users], hist, rewards


def _env_steps_per_s(inputs, sim_cfg, steps: int) -> float:
    from prefmine.policy.simulator import RecSimEnv

    env = RecSimEnv({"inputs": inputs, "config": sim_cfg})
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.choice(np.flatnonzero(env.valid))))
        if term or trunc:
            env.reset(seed=i + 1)
    return steps / (time.perf_counter() - t0)


def _train(name, inputs, sim_cfg, cfg, out: Path, probe_sessions: int, greedy_probe: float, seed: int) -> dict:
    """Train one algorithm, probing the greedy return of the live module after every iteration."""
    from cluster.train_policy import train_policy
    from prefmine.policy.evaluation import evaluate_policies
    from prefmine.policy.runtime import ModulePolicy
    from prefmine.policy.simulator import ObsSpec

    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    probes, eval_s = [], [0.0]

    def probe(algo, row):
        t = time.time()
        pol = ModulePolicy(algo.get_module(), cfg.algorithm)
        ev = evaluate_policies(inputs, {name: pol}, probe_sessions, seed=seed + 1000, sim_cfg=sim_cfg, spec=spec)
        eval_s[0] += time.time() - t
        probes.append({"iteration": row["iteration"], "env_steps": row["env_steps"],
                       "train_s": round(row["seconds"] - eval_s[0] + (time.time() - t), 1),
                       "probe_return": round(ev[name]["return_mean"], 4)})
        print(f"[bench.policy] {name} iter {row['iteration']} train {probes[-1]['train_s']}s "
              f"probe return {probes[-1]['probe_return']} (greedy {greedy_probe:.4f})", flush=True)
        return False

    metrics = train_policy(inputs, out, cfg, sim_cfg, verbose=False, on_iteration=probe, spec=spec)
    reached = next((p for p in probes if p["probe_return"] >= greedy_probe), None)
    train_s = probes[-1]["train_s"] if probes else metrics["train_seconds"]
    return {"algorithm": cfg.algorithm, "iterations": metrics["iterations"], "env_steps": metrics["env_steps"],
            "train_s": train_s, "rllib_env_steps_per_s": round(metrics["env_steps"] / max(train_s, 1e-9), 1),
            "time_to_greedy_s": reached["train_s"] if reached else None,
            "steps_to_greedy": reached["env_steps"] if reached else None, "probes": probes}


def _scorer(runtime):
    return lambda obs, items, valid: runtime.q_values(obs)


def _latency(runtime, inputs, reps: int = 300) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for b in (1, 64):
        obs = rng.normal(size=(b, runtime.spec.size)).astype(np.float32)
        x = obs[0] if b == 1 else obs
        runtime.q_values(x)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            runtime.q_values(x)
            ts.append((time.perf_counter() - t) * 1000)
        out[f"batch{b}"] = {"p50_ms": round(float(np.percentile(ts, 50)), 4),
                            "p95_ms": round(float(np.percentile(ts, 95)), 4)}
    ts = []
    for i in range(100):
        state = inputs.user_states[i % len(inputs.user_states)]
        sc = inputs.item_vectors @ state
        cands = np.argsort(-sc)[:50]
        t = time.perf_counter()
        runtime.select(state, cands, sc[cands], k=10)
        ts.append((time.perf_counter() - t) * 1000)
    out["slate_k10_of_50"] = {"p50_ms": round(float(np.percentile(ts, 50)), 3),
                              "p95_ms": round(float(np.percentile(ts, 95)), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n\n")[0])
    add_common(p, "policy")
    p.add_argument("--quick", action="store_true", help="short training and 1,000 sessions (under 5 minutes)")
    p.add_argument("--data", help="prepared dataset dir")
    p.add_argument("--bundle", help="bundle dir with a ranker trained on --data")
    p.add_argument("--workdir", default="/tmp/prefmine-bench-policy")
    p.add_argument("--sessions", type=int, default=None, help="evaluation sessions (default 4000; --quick 1000)")
    p.add_argument("--train-s", type=float, default=None, help="training budget per algorithm (default 600 s)")
    p.add_argument("--probe-sessions", type=int, default=300)
    p.add_argument("--algorithms", nargs="*", default=["DQN", "PPO"])
    p.add_argument("--networks", nargs="*", default=["flat"], choices=["flat", "per_candidate"],
                   help="DQN Q-networks to train (PPO: flat only)")
    p.add_argument("--seqrec", default=None, help="an S3-Rec data set under $PREFMINE_DATA_DIR/seqrec (e.g. Beauty)")
    p.add_argument("--no-ope", action="store_true", help="skip the off-policy estimates (slow on a big catalogue)")
    p.add_argument("--gate-sessions", type=int, default=None, help="sessions per policy for the gate (default --sessions)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PolicyTrainConfig overrides")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sessions = a.sessions or (1000 if a.quick else 4000)
    train_s = a.train_s or (60.0 if a.quick else 600.0)
    out = Path(a.out) if a.out else default_out("policy", a.quick)
    if a.plan:
        if a.data and a.bundle:
            require([Path(a.data) / "manifest.json", Path(a.bundle) / "manifest.json"], "--data / --bundle")
            inputs = {"data": a.data, "bundle": a.bundle}
        else:  # the same discovery the run does, down to the files prepare() would read
            from prefmine.data.sources import get_source

            raw = _default_raw(Path(a.workdir))
            chunks = get_source("amazon2018").plan(raw, CATEGORY)
            inputs = {"raw": raw, "files": [c["path"] for c in chunks], "prepared_into": Path(a.workdir) / "data",
                      "bundle_into": Path(a.workdir) / "bundle"}
        return print_plan("policy", **inputs, out=out, sessions=sessions, train_s_per_algorithm=train_s,
                          algorithms=a.algorithms, seed=a.seed)

    import torch

    torch.set_num_threads(1)
    from bench.data_scale import machine
    from cluster.train_policy import _ensure_ray
    from prefmine.config import apply, parse_overrides
    from prefmine.data.dataset import load_dataset
    from prefmine.policy.evaluation import evaluate_policies, format_evaluation
    from prefmine.policy.inputs import simulator_inputs
    from prefmine.policy.offpolicy import off_policy_estimates
    from prefmine.policy.response import auc
    from prefmine.policy.runtime import PolicyRuntime
    from prefmine.policy.simulator import ObsSpec
    from prefmine.train_config import preset

    t_start = time.time()
    if a.data and a.bundle:
        data, bundle = Path(a.data), Path(a.bundle)
    elif a.seqrec:
        data, bundle = _prepare_seqrec(Path(a.workdir), a.seqrec)
    else:
        data, bundle = _prepare_default(Path(a.workdir))
    ds = load_dataset(data, with_reviews=True)
    inputs = simulator_inputs(ds, bundle)
    base, sim_cfg = preset("tiny").policy, preset("tiny").simulator
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    users, test_items, test_hist, rewards = _test_rewards(ds, sim_cfg.purchase_value)
    report: dict = {"bench": "policy", "machine": machine(), "data": str(data), "bundle": str(bundle),
                    "dataset": {"users": int(ds.n_users), "items": int(ds.n_items),
                                "simulated_users": int(len(inputs.user_states))},
                    "settings": {"sessions": sessions, "train_s_per_algorithm": train_s, "quick": a.quick,
                                 "probe_sessions": a.probe_sessions, "simulator": asdict(sim_cfg), "seed": a.seed,
                                 "overrides": a.set}}
    report["response_auc"] = {"test_item_vs_20_random": round(auc(inputs.response, test_hist, test_items), 4),
                              "fit_meta": inputs.response.meta}
    print(f"[bench.policy] response model AUC (held-out test item vs random) {report['response_auc']}", flush=True)
    report["env_steps_per_s"] = round(_env_steps_per_s(inputs, sim_cfg, 3000 if a.quick else 10_000), 1)
    print(f"[bench.policy] env steps/s {report['env_steps_per_s']}", flush=True)

    greedy_probe = evaluate_policies(inputs, None, a.probe_sessions, seed=a.seed + 1000, sim_cfg=sim_cfg,
                                     spec=spec)["greedy"]["return_mean"]
    _ensure_ray()
    out_root = Path(a.workdir) / "policies"
    runtimes, training = {}, {}
    runs = [(alg, net) for alg in a.algorithms for net in (a.networks if alg == "DQN" else ["flat"])]
    for alg, net in runs:
        cfg = apply(base, {"algorithm": alg, "max_iterations": 10_000, "time_budget_s": train_s,
                           "seed": a.seed, "network": net, **parse_overrides(a.set)})
        name = alg.lower() + ("" if net == "flat" else f"_{net}")
        training[name] = _train(name, inputs, sim_cfg, cfg, out_root / name, a.probe_sessions, greedy_probe,
                                a.seed)
        runtimes[name] = PolicyRuntime(out_root / name)
    report["training"] = {"greedy_probe_return": round(greedy_probe, 4), **training}

    ev = evaluate_policies(inputs, runtimes, sessions, seed=a.seed + 1, sim_cfg=sim_cfg, include_oracle=True)
    report["policies"] = ev
    learned = {k: v for k, v in ev.items() if k in runtimes}
    best = max(learned, key=lambda k: learned[k]["return_mean"]) if learned else None
    if best:
        g, b = ev["greedy"], ev[best]
        report["verdict"] = {
            "best_learned": best,
            "beats_greedy_outside_intervals": bool(b["return_mean"] - b["ci95"] > g["return_mean"] + g["ci95"]),
            "paired_diff_excludes_zero": bool(b["vs_greedy"]["diff_mean"] - b["vs_greedy"]["ci95"] > 0),
        }
    print(format_evaluation(ev), flush=True)

    # the gate's comparison: each learned policy against greedy, popularity and a tuned mix, on other sessions
    from prefmine.policy.gate import gate_policy

    report["gate"] = {}
    for name, rt in runtimes.items():
        decision, gr = gate_policy(inputs, rt, a.gate_sessions or sessions, seed=a.seed + 2, sim_cfg=sim_cfg,
                                   spec=spec, learned=name)
        report["gate"][name] = {"decision": decision.to_dict(), "alpha": gr["alpha"], "mix_tuning": gr["mix_tuning"],
                                "sessions": gr["sessions"], "seed": gr["seed"], "val_seed": gr["val_seed"],
                                "policies": {k: {m: v[m] for m in ("return_mean", "ci95", "ctr", "ctr_ci95")}
                                             for k, v in gr["policies"].items()}}
        print(f"[bench.policy] gate {name}: serves {decision.served} ({decision.reason})", flush=True)

    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))
    from prefmine.ranker.runtime import RankerRuntime

    if a.no_ope:
        report["off_policy"] = None  # skipped (--no-ope)
    else:
        states = RankerRuntime(bundle).user_states(test_hist)
        ope_pols = {name: _scorer(rt) for name, rt in runtimes.items()}
        ope_pols["greedy"] = lambda obs, items, valid: -np.arange(len(items), dtype=np.float64)
        ope_pols["popularity"] = lambda obs, items, valid: log_pop[np.where(valid, items, 0)]
        ope_pols["random"] = None
        report["off_policy"] = off_policy_estimates(ope_pols, spec, states, test_hist, test_items, rewards,
                                                    inputs.item_vectors, inputs.item_popularity, seed=a.seed)
        for name, r in report["off_policy"]["policies"].items():
            print(f"[bench.policy] OPE {name}: IPS {r['ips']:.3f} {r['ips_ci95']} SNIPS {r['snips']} ESS {r['ess']:.0f}",
                  flush=True)
    report["latency"] = {name: _latency(rt, inputs) for name, rt in runtimes.items()}
    print(f"[bench.policy] latency {report['latency']}", flush=True)
    report["total_s"] = round(time.time() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    tmp.replace(out)
    print(f"[bench.policy] wrote {out} ({report['total_s']} s)", flush=True)
    import ray

    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
