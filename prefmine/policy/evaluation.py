"""Policy evaluation on the simulator: learned vs greedy vs popularity vs random on the same seeded sessions.

`evaluate_policies` runs every policy on the same seeded simulated sessions (common random numbers) and reports
return mean, CTR and conversion, each with a 95% CI, and the paired difference of every policy's return against
greedy; `format_evaluation` renders that as a Markdown table. No Ray: the sessions are stepped in-process on
`RecSimEnv`, the learned policy through a `PolicyRuntime` (or anything with `act(obs, valid)`).
"""

from __future__ import annotations

import numpy as np

from prefmine.policy.simulator import ObsSpec, RecSimEnv, SimulatorConfig, SimulatorInputs


def _mean_ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _ratio_ci(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum(num)/sum(den) over sessions and the half-width of its 95% interval (delta method, sessions as the
    independent units: the clicks of one session are not independent of each other)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if den.sum() == 0:
        return 0.0, 0.0
    r = num.sum() / den.sum()
    n = len(num)
    resid = (num - r * den) / den.mean()
    return float(r), float(1.96 * resid.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def _run_sessions(inputs, sim_cfg, spec, choose, n_sessions: int, seed: int) -> dict:
    """Run `n_sessions` seeded sessions; per-session arrays (return, shows, clicks, purchases)."""
    env = RecSimEnv({"inputs": inputs, "config": sim_cfg, "obs_spec": spec})
    rng = np.random.default_rng(seed + 7)
    out = np.zeros((n_sessions, 4))
    for s in range(n_sessions):
        obs, _ = env.reset(seed=seed * 100_003 + s)
        done = False
        while not done:
            a = choose(env, obs, rng)
            obs, r, term, trunc, info = env.step(a)
            out[s] += (r, info["item"] >= 0, info["click"], info["purchase"])
            done = term or trunc
    return {"return": out[:, 0], "shows": out[:, 1], "clicks": out[:, 2], "purchases": out[:, 3]}


def summarise_sessions(runs: dict) -> dict:
    """return_mean/ci95, ctr/ctr_ci95 (clicks per item shown), conversion/conversion_ci95 (purchases per item
    shown), purchases_per_click, mean session length, and the return's paired difference against greedy."""
    ret, ci = _mean_ci(runs["return"])
    ctr, ctr_ci = _ratio_ci(runs["clicks"], runs["shows"])
    conv, conv_ci = _ratio_ci(runs["purchases"], runs["shows"])
    return {"return_mean": ret, "ci95": ci, "ctr": ctr, "ctr_ci95": ctr_ci, "conversion": conv,
            "conversion_ci95": conv_ci,
            "purchases_per_click": float(runs["purchases"].sum() / max(runs["clicks"].sum(), 1)),
            "session_len_mean": float(runs["shows"].mean()), "sessions": int(len(runs["return"]))}


def greedy_action(env, obs, rng) -> int:
    """The ranker's top remaining candidate (candidates are in ranker order)."""
    return int(np.flatnonzero(env.valid)[0]) if env.valid.any() else 0


def _learned(runtime):
    return lambda env, obs, rng: runtime.act(obs, env.valid)


def evaluate_policies(inputs: SimulatorInputs, policy_runtime, n_sessions: int = 1000, seed: int = 0,
                      sim_cfg: SimulatorConfig | None = None, include_oracle: bool = False,
                      spec: ObsSpec | None = None, extra: dict | None = None) -> dict:
    """Learned vs greedy vs popularity vs random on the same seeded sessions (common random numbers).

    policy_runtime: a PolicyRuntime, a dict {name: PolicyRuntime} (several learned policies), or None (baselines
    only); a single runtime is reported as "learned". The simulator config defaults to the one the (first)
    policy was trained with. Every policy gets `summarise_sessions`' figures plus `vs_greedy` = the mean paired
    difference of session return against greedy on the same sessions and its 95% CI (the same seeds give both
    policies the same users and random draws, so the paired interval is tighter than the two separate ones).
    include_oracle adds "oracle_myopic": it reads the response model and shows the candidate with the highest
    expected immediate reward (a reference, not a deployable policy). extra: more policies {name: choose(env, obs,
    rng) -> action} run on the same sessions (the gate's tuned `mix`).
    """
    runtimes = policy_runtime if isinstance(policy_runtime, dict) else (
        {"learned": policy_runtime} if policy_runtime is not None else {})
    first = next(iter(runtimes.values()), None)
    if sim_cfg is None:
        sim_cfg = SimulatorConfig(**first.config["simulator"]) if hasattr(first, "config") else SimulatorConfig()
    spec = spec or getattr(first, "spec", None) or ObsSpec.from_inputs(inputs, sim_cfg)
    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))

    def popular(env, obs, rng):
        pops = np.where(env.valid, log_pop[np.where(env.valid, env.cand, 0)], -np.inf)
        return int(np.argmax(pops))

    policies = {name: _learned(rt) for name, rt in runtimes.items()}
    policies.update({
        "greedy": greedy_action,
        "popularity": popular,
        "random": lambda env, obs, rng: int(rng.choice(np.flatnonzero(env.valid))),
    })
    policies.update(extra or {})
    if include_oracle:
        resp = inputs.response

        def oracle(env, obs, rng):
            safe = np.where(env.valid, env.cand, 0)
            value = resp.attraction(np.asarray(env.history), safe) * (1 + resp.buy_prob[safe] * sim_cfg.purchase_value)
            return int(np.argmax(np.where(env.valid, value, -np.inf)))

        policies["oracle_myopic"] = oracle
    runs = {name: _run_sessions(inputs, sim_cfg, spec, fn, n_sessions, seed) for name, fn in policies.items()}
    out = {}
    for name, r in runs.items():
        out[name] = summarise_sessions(r)
        d, dci = _mean_ci(r["return"] - runs["greedy"]["return"])
        out[name]["vs_greedy"] = {"diff_mean": d, "ci95": dci}
    return out


def format_evaluation(ev: dict) -> str:
    lines = ["| policy | return (95% CI) | CTR (95% CI) | conversion (95% CI) | vs greedy (paired 95% CI) |",
             "|---|---|---|---|---|"]
    for name, r in ev.items():
        g = r.get("vs_greedy", {})
        lines.append(f"| {name} | {r['return_mean']:.3f} ± {r['ci95']:.3f} | {r['ctr']:.4f} ± {r['ctr_ci95']:.4f} "
                     f"| {r['conversion']:.4f} ± {r['conversion_ci95']:.4f} "
                     f"| {g.get('diff_mean', 0):+.3f} ± {g.get('ci95', 0):.3f} |")
    return "\n".join(lines)

