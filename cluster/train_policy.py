"""Train the recommendation policy with RLlib DQN on the user simulator, export it, and evaluate it.

`train_policy` builds a DQN (RLlib new API stack) on `RecSimEnv`, trains for a time/iteration budget with a
small rollout fragment and train batch (RLlib's DQN defaults make one iteration take ~40 s on 2 cores), and
exports the RLModule so that `prefmine.policy.runtime.PolicyRuntime` can load it without an Algorithm:

    out_dir/rl_module/            RLModule checkpoint (module.save_to_path)
    out_dir/policy_config.json    simulator config, obs spec and layout, N, training metrics
    out_dir/item_vectors.npy      the ranker item vectors the policy was trained against (obs feature)
    out_dir/item_popularity.npy   train counts (obs feature)

`evaluate_policies` runs the learned, greedy (ranker's top item), popularity and random policies on the same
seeded simulated sessions and reports return mean, 95% CI and CTR for each.

The caller owns Ray: if it is not initialised, a local one is started (2 CPUs, one OMP thread per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prefmine.config import ConfigError, load_file, parse_overrides, resolve
from prefmine.policy.simulator import (
    SIMULATOR_PRESETS,
    ObsSpec,
    RecSimEnv,
    SimulatorConfig,
    SimulatorInputs,
    obs_layout,
)


@dataclass(frozen=True)
class PolicyTrainConfig:
    """DQN training settings. Presets: `POLICY_PRESETS`; `simulator` names the SimulatorConfig preset."""

    simulator: str = "tiny"
    max_iterations: int = 12
    time_budget_s: float = 100.0  # stop after the iteration that crosses this
    steps_per_iteration: int = 1000  # env steps sampled per train() call
    rollout_fragment_length: int = 5  # per env: 5 x 4 envs = 20 env steps per training step (50 updates/1000 steps)
    num_envs_per_env_runner: int = 4  # vectorised envs batch the module's inference (RLlib's per-step overhead)
    train_batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.5  # sessions are short; the immediate click dominates
    hiddens: tuple = (64, 64)
    epsilon_timesteps: int = 4000
    final_epsilon: float = 0.05
    learning_starts: int = 500
    target_update_freq: int = 500
    buffer_capacity: int = 50_000
    replay_buffer: str = "EpisodeReplayBuffer"  # uniform; "PrioritizedEpisodeReplayBuffer" samples ~10x slower
    n_step: int = 1
    num_env_runners: int = 0  # 0: sample in the driver's local env runner (cheapest on a small machine)
    seed: int = 0


POLICY_PRESETS = {
    "tiny": PolicyTrainConfig(),
    "base": PolicyTrainConfig(simulator="base", max_iterations=100, time_budget_s=1800.0, hiddens=(256, 256),
                              train_batch_size=256, rollout_fragment_length=32, epsilon_timesteps=30_000,
                              learning_starts=2000, target_update_freq=2000, num_env_runners=2),
    "large": PolicyTrainConfig(simulator="large", max_iterations=500, time_budget_s=4 * 3600.0,
                               hiddens=(512, 512), train_batch_size=512, rollout_fragment_length=64,
                               epsilon_timesteps=200_000, learning_starts=10_000, target_update_freq=8000,
                               buffer_capacity=500_000, num_env_runners=8),
}


def _ensure_ray():
    import ray

    if not ray.is_initialized():
        try:
            from cluster.ray_env import ensure_ray

            ensure_ray(num_cpus=2, dashboard=False)
        except ImportError:  # pragma: no cover - ray_env is the lead's; fall back to the same settings
            ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    return ray


def _buffer_extra(cfg: PolicyTrainConfig) -> dict:
    return {"alpha": 0.6, "beta": 0.4} if "Prioritized" in cfg.replay_buffer else {}


def dqn_config(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig, spec: ObsSpec):
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        DQNConfig()
        .environment(RecSimEnv, env_config={"inputs": inputs, "config": sim_cfg, "obs_spec": spec})
        .env_runners(num_env_runners=cfg.num_env_runners, rollout_fragment_length=cfg.rollout_fragment_length,
                     num_envs_per_env_runner=cfg.num_envs_per_env_runner)
        .training(lr=cfg.lr, gamma=cfg.gamma, train_batch_size=cfg.train_batch_size, n_step=cfg.n_step,
                  num_steps_sampled_before_learning_starts=cfg.learning_starts,
                  target_network_update_freq=cfg.target_update_freq, double_q=True, dueling=True,
                  epsilon=[(0, 1.0), (cfg.epsilon_timesteps, cfg.final_epsilon)],
                  replay_buffer_config={"type": cfg.replay_buffer,
                                        "capacity": cfg.buffer_capacity, **_buffer_extra(cfg)})
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(cfg.hiddens), fcnet_activation="relu",
                                                   head_fcnet_hiddens=[]))
        .reporting(min_sample_timesteps_per_iteration=cfg.steps_per_iteration, min_time_s_per_iteration=None)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )


def train_policy(inputs: SimulatorInputs, out_dir: Path, cfg: PolicyTrainConfig | None = None,
                 sim_cfg: SimulatorConfig | None = None, verbose: bool = True) -> dict:
    """Train DQN on the simulator and export the RLModule + policy_config.json to `out_dir`; returns metrics."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = cfg or POLICY_PRESETS["tiny"]
    sim_cfg = sim_cfg or SIMULATOR_PRESETS[cfg.simulator]
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    _ensure_ray()
    algo = dqn_config(inputs, sim_cfg, cfg, spec).build_algo()
    history, t0 = [], time.time()
    try:
        for it in range(1, cfg.max_iterations + 1):
            res = algo.train()
            env = res.get("env_runners", {})
            row = {"iteration": it, "seconds": round(time.time() - t0, 1),
                   "env_steps": int(res.get("num_env_steps_sampled_lifetime", 0)),
                   "episode_return_mean": _f(env.get("episode_return_mean")),
                   "episode_len_mean": _f(env.get("episode_len_mean"))}
            history.append(row)
            if verbose:
                eta = (time.time() - t0) / it * (cfg.max_iterations - it)
                print(f"[policy] iter {it}/{cfg.max_iterations} steps {row['env_steps']} "
                      f"return {row['episode_return_mean']} ({row['seconds']:.0f}s, eta<={eta:.0f}s)", flush=True)
            if time.time() - t0 >= cfg.time_budget_s:
                break
        metrics = {"train_seconds": round(time.time() - t0, 1), "iterations": len(history),
                   "env_steps": history[-1]["env_steps"] if history else 0, "history": history}
        export_policy(algo.get_module(), out_dir, inputs, sim_cfg, cfg, spec, metrics)
    finally:
        algo.stop()
    return metrics


def _f(x):
    try:
        return None if x is None or np.isnan(x) else round(float(x), 4)
    except TypeError:
        return None


def export_policy(module, out_dir: Path, inputs: SimulatorInputs, sim_cfg: SimulatorConfig,
                  cfg: PolicyTrainConfig, spec: ObsSpec, metrics: dict) -> Path:
    """Write the policy dir atomically (temp dir, then rename), replacing an older one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".policy-", dir=out_dir.parent))
    try:
        module.save_to_path(str((tmp / "rl_module").resolve()))
        np.save(tmp / "item_vectors.npy", np.asarray(inputs.item_vectors, dtype=np.float32))
        np.save(tmp / "item_popularity.npy", np.asarray(inputs.item_popularity, dtype=np.float64))
        conf = {"format": "prefmine-policy/1", "algorithm": "DQN", "n_candidates": sim_cfg.n_candidates,
                "simulator": asdict(sim_cfg), "train": asdict(cfg), "obs_spec": spec.to_dict(),
                "obs_layout": obs_layout(spec), "obs_size": spec.size, "n_items": int(len(inputs.item_vectors)),
                "metrics": metrics}
        (tmp / "policy_config.json").write_text(json.dumps(conf, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _run_sessions(inputs, sim_cfg, spec, choose, n_sessions: int, seed: int) -> dict:
    env = RecSimEnv({"inputs": inputs, "config": sim_cfg, "obs_spec": spec})
    rng = np.random.default_rng(seed + 7)
    returns, shows, clicks = [], 0, 0
    for s in range(n_sessions):
        obs, _ = env.reset(seed=seed * 100_003 + s)
        total, done = 0.0, False
        while not done:
            a = choose(env, obs, rng)
            obs, r, term, trunc, info = env.step(a)
            total += r
            shows += info["item"] >= 0
            clicks += info["click"]
            done = term or trunc
        returns.append(total)
    ret = np.asarray(returns)
    return {"return_mean": float(ret.mean()), "ci95": float(1.96 * ret.std(ddof=1) / np.sqrt(len(ret))),
            "ctr": float(clicks / max(shows, 1)), "sessions": n_sessions}


def evaluate_policies(inputs: SimulatorInputs, policy_runtime, n_sessions: int = 500, seed: int = 0,
                      sim_cfg: SimulatorConfig | None = None, include_oracle: bool = False) -> dict:
    """Learned vs greedy vs popularity vs random on the same seeded sessions (common random numbers).

    policy_runtime: a PolicyRuntime (or None to skip the learned policy). The simulator config defaults to
    the one the policy was trained with. include_oracle adds "oracle_myopic": it reads the response model
    and shows the candidate with the highest expected immediate reward (a reference, not a deployable policy).
    """
    if sim_cfg is None:
        sim_cfg = SimulatorConfig(**policy_runtime.config["simulator"]) if policy_runtime else SimulatorConfig()
    spec = policy_runtime.spec if policy_runtime else ObsSpec.from_inputs(inputs, sim_cfg)
    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))

    def popular(env, obs, rng):
        pops = np.where(env.valid, log_pop[np.where(env.valid, env.cand, 0)], -np.inf)
        return int(np.argmax(pops))

    policies = {
        "greedy": lambda env, obs, rng: 0,
        "popularity": popular,
        "random": lambda env, obs, rng: int(rng.choice(np.flatnonzero(env.valid))),
    }
    if include_oracle:
        resp = inputs.response

        def oracle(env, obs, rng):
            safe = np.where(env.valid, env.cand, 0)
            value = resp.attraction(np.asarray(env.history), safe) * (1 + resp.buy_prob[safe] * sim_cfg.purchase_value)
            return int(np.argmax(np.where(env.valid, value, -np.inf)))

        policies["oracle_myopic"] = oracle
    if policy_runtime is not None:
        policies = {"learned": lambda env, obs, rng: policy_runtime.act(obs, env.valid), **policies}
    return {name: _run_sessions(inputs, sim_cfg, spec, fn, n_sessions, seed) for name, fn in policies.items()}


def main(argv: list[str] | None = None) -> int:
    """Train a policy from a pickled SimulatorInputs (the `prefmine train policy` command builds one from the
    data and the ranker and calls `train_policy` directly)."""
    p = argparse.ArgumentParser(prog="python -m cluster.train_policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", required=True, help="pickle of a prefmine.policy.simulator.SimulatorInputs")
    p.add_argument("--out", required=True, help="policy output dir (e.g. BUNDLE/policy)")
    p.add_argument("--preset", default="tiny", choices=sorted(POLICY_PRESETS))
    p.add_argument("--config", help="YAML/JSON file with `policy:` and/or `simulator:` sections")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PolicyTrainConfig overrides")
    p.add_argument("--sim-set", nargs="*", default=[], metavar="KEY=VALUE", help="SimulatorConfig overrides")
    p.add_argument("--eval-sessions", type=int, default=300)
    p.add_argument("--json", help="write metrics + evaluation here")
    args = p.parse_args(argv)
    import pickle

    from prefmine.policy.runtime import PolicyRuntime

    try:
        file = load_file(args.config) if args.config else {}
        cfg = resolve(POLICY_PRESETS, args.preset, file.get("policy"), parse_overrides(args.set))
        sim_cfg = resolve(SIMULATOR_PRESETS, cfg.simulator, file.get("simulator"), parse_overrides(args.sim_set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(args.inputs, "rb") as f:
        inputs = pickle.load(f)
    if not isinstance(inputs, SimulatorInputs):
        print(f"error: --inputs {args.inputs} does not hold a SimulatorInputs", file=sys.stderr)
        return 2
    metrics = train_policy(inputs, Path(args.out), cfg, sim_cfg)
    ev = evaluate_policies(inputs, PolicyRuntime(args.out), args.eval_sessions, seed=cfg.seed, include_oracle=True)
    for name, r in ev.items():
        print(f"{name:>13}: return {r['return_mean']:.3f} +- {r['ci95']:.3f}  ctr {r['ctr']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"train": metrics, "policies": ev}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
