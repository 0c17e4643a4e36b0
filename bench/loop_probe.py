"""Why the closed loop's learning arm does not beat its greedy control: the same users and response model, in process.

    python -m bench.loop_probe --bundle BUNDLE [--sessions 3000] [--out F] [--plan]

For one bundle with a policy (bench.closed_loop's `--bundle`), three views of the same policies on the users
bench.closed_loop draws (the data's users with their catalogue histories) and the bundle's response model:

1. `simulator`: the policy gate's own evaluation (prefmine.policy.evaluation, one item per step from the top-N
   unseen, the bundle's simulator settings) on these users: mean session return, paired difference to greedy.
2. `population_before`: bench.closed_loop's population as it was up to 2026-12-05 (slates of 10, up to 3 a
   session, later pages not excluding what the session showed, users forgetting their clicks between sessions
   while the service remembers them), slates built the way serving builds them (the ranker's candidates, then
   `PolicyVersion.select` with the arm's policy), the service's history growing with every click.
3. `population`: the population as it is now (sessions shaped like the simulator's, pages excluding what was
   shown, clicks remembered), the same serving-built slates.

Beside greedy, learned and popularity, `oracle_slate` (each slate: the candidates with the highest expected
immediate reward under the response model, built at once as serving builds a slate) is a reference for a policy
that is better: the population must tell it apart from greedy if the bench can tell anything apart. Common random
numbers: session s of every policy draws the same user and the same random stream. No Ray, no gRPC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan, require

POLICIES = ("greedy", "learned", "popularity", "oracle_slate")


def served_sessions(bundle: Path, policy: str, pop_cfg, n: int, before: bool) -> dict:
    """`n` population sessions against in-process serving of `policy`; the arm's tally and the first-item share."""
    from bench.closed_loop import population
    from prefmine.closed_loop import ArmTally, Slate
    from prefmine.policy.response import load_response
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.serving.policy import PolicyVersion
    from prefmine.serving.ranking import candidates_for

    pop = population(bundle, pop_cfg)
    start = {u: list(h) for u, h in pop.histories.items()}
    served = {u: list(h) for u, h in start.items()}  # the service's history: catalogue + every click heard of
    ranker, version = RankerRuntime(bundle), PolicyVersion(str(bundle))
    resp = load_response(bundle / "policy" / "response_model.npz")
    n_items = len(pop.item_ids)
    tally = ArmTally()
    for s in range(n):
        rng = np.random.default_rng([0, s])
        user = pop.draw(rng)

        def recommend(u, k, exclude):
            ex = set(served[u]) | (set() if before else {pop.index[i] for i in exclude})
            cand = candidates_for(ranker, [served[u]], [min(100, n_items - len(ex))], [ex])[0]
            if policy == "oracle_slate":
                value = resp.attraction(np.asarray(served[u]), cand["idx"]) * (1 + resp.buy_prob[cand["idx"]])
                slate = cand["idx"][np.argsort(-value, kind="stable")[:k]]
            else:
                slate = version.select(cand["state"], cand["idx"], cand["scores"], k, policy=policy)
            return Slate("probe", policy, [pop.item_ids[i] for i in slate])

        def feedback(u, outcome):
            served[u] += [pop.index[i] for i in outcome.clicks]

        tally.add_session(pop.session(user, recommend, feedback, rng))
        if before:  # the population as it was: a session's clicks were forgotten when it ended
            pop.histories[user] = list(start[user])
    return tally.summary()


def simulator_figures(bundle: Path, n: int) -> dict:
    """The gate's evaluation on bench.closed_loop's users (their catalogue histories, the bundle's ranker)."""
    from bench.closed_loop import population
    from prefmine.closed_loop import PopulationConfig
    from prefmine.policy.evaluation import evaluate_policies
    from prefmine.policy.runtime import PolicyRuntime
    from prefmine.policy.simulator import SimulatorInputs
    from prefmine.ranker.runtime import RankerRuntime

    pop = population(bundle, PopulationConfig())
    hs = [np.asarray(pop.histories[u], dtype=np.int64) for u in pop.users]
    ranker, runtime = RankerRuntime(bundle), PolicyRuntime(bundle)
    inputs = SimulatorInputs(user_states=ranker.user_states(hs).astype(np.float32), item_vectors=ranker.item_vectors,
                             item_popularity=np.load(bundle / "policy" / "item_popularity.npy", allow_pickle=False),
                             user_histories=hs, response=pop.response, blend=ranker.blend)
    ev = evaluate_policies(inputs, runtime, n, seed=0, include_oracle=True)
    return {name: {"return_mean": r["return_mean"], "ci95": r["ci95"], "ctr_per_step": r["ctr"],
                   "vs_greedy": r["vs_greedy"]} for name, r in ev.items()}


def first_items(bundle: Path) -> dict:
    """How often the learned policy's slate of 10 starts with (and equals) the ranker's own, over every user."""
    from bench.closed_loop import population
    from prefmine.closed_loop import PopulationConfig
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.serving.policy import PolicyVersion
    from prefmine.serving.ranking import candidates_for

    pop = population(bundle, PopulationConfig())
    ranker, version = RankerRuntime(bundle), PolicyVersion(str(bundle))
    same_first = same = 0
    for u in pop.users:
        h = pop.histories[u]
        c = candidates_for(ranker, [h], [100], [set(h)])[0]
        g = version.select(c["state"], c["idx"], c["scores"], 10, policy="greedy")
        learned = version.select(c["state"], c["idx"], c["scores"], 10, policy="learned")
        same_first += int(g[0] == learned[0])
        same += int(list(g) == list(learned))
    return {"users": len(pop.users), "same_first_item": same_first, "same_slate": same}


def main(argv: list[str] | None = None) -> int:
    from bench.data_scale import machine
    from prefmine.closed_loop import PopulationConfig

    p = argparse.ArgumentParser(prog="python -m bench.loop_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=3000, help="sessions per policy and population")
    p.add_argument("--bundle", required=True, help="a bundle with a policy (bench.closed_loop's --bundle)")
    add_common(p, "loop_probe")
    a = p.parse_args(argv)
    bundle = Path(a.bundle).resolve()
    require([bundle / "policy" / "policy_config.json", bundle / "policy" / "gate.json"],
            "--bundle must be a bundle directory with a gated policy (prefmine train --out)")
    out = Path(a.out) if a.out else default_out("loop_probe", False)
    if a.plan:
        return print_plan("loop_probe", bundle=bundle, sessions=a.sessions, policies=list(POLICIES), out=out)
    t0 = time.time()
    sim = json.loads((bundle / "policy" / "policy_config.json").read_text())["simulator"]
    shapes = {"population_before": (PopulationConfig(k=10, pages=3), True),
              "population": (PopulationConfig.like_simulator(sim), False)}
    result = {"bench": "loop_probe", "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(),
              "bundle": str(bundle), "sessions": a.sessions, "simulator_settings": sim,
              "gate": json.loads((bundle / "policy" / "gate.json").read_text()),
              "baseline": "greedy (the ranker's order), on the same sessions",
              "simulator": simulator_figures(bundle, a.sessions), "learned_vs_greedy_slates": first_items(bundle)}
    for name, (cfg, before) in shapes.items():
        result[name] = {"config": asdict(cfg), **{pol: served_sessions(bundle, pol, cfg, a.sessions, before)
                                                   for pol in POLICIES}}
        for pol in POLICIES:
            r = result[name][pol]
            print(f"{name:<18} {pol:<13} CTR {r['ctr']:.4f} [{r['ctr_ci95'][0]:.4f}, {r['ctr_ci95'][1]:.4f}] "
                  f"return/session {r['return_per_session']:.3f}", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for name, r in result["simulator"].items():
        print(f"simulator {name:<14} return {r['return_mean']:.3f} ± {r['ci95']:.3f}  vs greedy "
              f"{r['vs_greedy']['diff_mean']:+.3f} ± {r['vs_greedy']['ci95']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
