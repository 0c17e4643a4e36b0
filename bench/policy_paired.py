"""Diagnostic: the paired difference of session return, an exported policy minus popularity, on the gate's sessions.

The gate (prefmine.policy.gate.decide) compares the two policies' separate 95% intervals; this reruns both on the
same seeded sessions (common random numbers, as the gate does) and gives the 95% interval of the per-session
difference as well, to show how far apart they are once the shared session noise is removed. Not a gate rule.

    python -m bench.policy_paired --data DIR --bundle DIR --policy DIR --seed GATE_SEED --sessions N [--out FILE]

(GATE_SEED: `gate.<policy>.seed` of the bench.policy run that trained the policy, i.e. its --seed + 2.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.policy_paired", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--policy", required=True, help="an exported policy dir (bench.policy's <workdir>/policies/<name>)")
    p.add_argument("--seed", type=int, required=True, help="the gate's session seed")
    p.add_argument("--sessions", type=int, default=4000)
    p.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from prefmine.data.dataset import load_dataset
    from prefmine.policy.evaluation import _learned, _mean_ci, _run_sessions
    from prefmine.policy.inputs import simulator_inputs
    from prefmine.policy.runtime import PolicyRuntime
    from prefmine.policy.simulator import ObsSpec
    from prefmine.train_config import preset

    inputs = simulator_inputs(load_dataset(a.data, with_reviews=True), a.bundle)
    sim_cfg = preset("tiny").simulator
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    rt = PolicyRuntime(a.policy)
    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))

    def popular(env, obs, rng):
        return int(np.argmax(np.where(env.valid, log_pop[np.where(env.valid, env.cand, 0)], -np.inf)))

    learned = _run_sessions(inputs, sim_cfg, spec, _learned(rt), a.sessions, a.seed)["return"]
    pop = _run_sessions(inputs, sim_cfg, spec, popular, a.sessions, a.seed)["return"]
    out: dict = {"policy": a.policy, "gate_seed": a.seed, "sessions": a.sessions}
    for k, x in (("learned", learned), ("popularity", pop), ("learned_minus_popularity_paired", learned - pop)):
        m, ci = _mean_ci(x)
        out[k] = {"mean": round(m, 4), "ci95": round(ci, 4)}
    line = json.dumps(out)
    print(line, flush=True)
    if a.out:
        with Path(a.out).open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
