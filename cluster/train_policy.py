"""Train the recommendation policy with RLlib (DQN or PPO) on the user simulator: the Ray wiring.

`train_policy` builds a DQN (double, dueling Q-learning) or a PPO (clipped policy gradient with a value
baseline) on `RecSimEnv`, both on RLlib's new API stack (RLModule + Learner + EnvRunner), trains for a
time/iteration budget with a small rollout fragment and train batch (RLlib's DQN defaults make one iteration take
~40 s on 2 cores), and exports the policy network with `prefmine.policy.runtime.save_policy` so that
`PolicyRuntime` can load it without RLlib and without unpickling anything (an RLModule checkpoint is loaded by
unpickling its class).

What needs no Ray lives in prefmine/policy/: the settings and presets (`config.py`), checkpoint bookkeeping and
the resume rules (`checkpoint.py`, whose docstring says what a resume restores), the export (`runtime.py`) and
the evaluation statistics (`evaluation.py`). Their names are re-exported here for existing callers.

`warm_start` continues from an exported policy (the incremental update job, `cluster/update_policy.py`): its
safetensors weights are loaded into the Learner's module (DQN: target network synced to them) and broadcast to
the EnvRunners before the first sample. Padded candidate slots are not masked inside RLlib (both algorithms learn from the
PAD_SCORE features that a padded slot shows nothing); `PolicyRuntime` and the evaluation mask them.

The caller owns Ray: if it is not initialised, a local one is started (2 CPUs, one OMP thread per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from prefmine import train_config
from prefmine.config import ConfigError
from prefmine.policy.checkpoint import (  # noqa: F401  (re-exported: tests and benches import them from here)
    CHECKPOINT_FORMAT,
    CHECKPOINT_STATE,
    KEEP_CHECKPOINTS,
    REPLAY_BUFFER_FILE,
    CheckpointMismatch,
    check_resumable,
    checkpoint_identity,
    find_checkpoint,
    inputs_fingerprint,
    local_checkpoint_dir,
    pull_checkpoint,
    push_checkpoint,
    read_checkpoint_state,
    remove_checkpoints,
    save_checkpoint,
)
from prefmine.policy.config import ALGORITHMS, PolicyTrainConfig  # noqa: F401
from prefmine.policy.evaluation import (  # noqa: F401
    evaluate_policies,
    format_evaluation,
    greedy_action,
    summarise_sessions,
)
from prefmine.policy.gate import gate_policy
from prefmine.policy.runtime import save_policy
from prefmine.policy.simulator import (
    ObsSpec,
    RecSimEnv,
    SimulatorConfig,
    SimulatorInputs,
)
from prefmine.storage import is_uri, join

export_policy = save_policy  # the old name


def _ensure_ray():
    import ray

    if not ray.is_initialized():
        from cluster.ray_env import ensure_ray

        ensure_ray(num_cpus=2, dashboard=False)
    return ray


def _buffer_extra(cfg: PolicyTrainConfig) -> dict:
    return {"alpha": 0.6, "beta": 0.4} if "Prioritized" in cfg.replay_buffer else {}


def _env_and_runners(config, inputs, sim_cfg, cfg, spec):
    return (config
            .environment(RecSimEnv, env_config={"inputs": inputs, "config": sim_cfg, "obs_spec": spec})
            .env_runners(num_env_runners=cfg.num_env_runners, rollout_fragment_length=cfg.rollout_fragment_length,
                         num_envs_per_env_runner=cfg.num_envs_per_env_runner)
            .debugging(seed=cfg.seed, log_level="ERROR"))


def _model_config(cfg: PolicyTrainConfig):
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return DefaultModelConfig(fcnet_hiddens=list(cfg.hiddens), fcnet_activation="relu", head_fcnet_hiddens=[])


def per_candidate_arch(cfg: PolicyTrainConfig, spec: ObsSpec) -> dict:
    return {"dim": spec.dim, "n_candidates": spec.n_candidates, "state_hidden": int(cfg.state_hidden),
            "hiddens": [int(h) for h in cfg.hiddens]}


def _dqn_module(cfg: PolicyTrainConfig, spec: ObsSpec) -> dict:
    """RLlib's default DQN module, or (network: per_candidate) cluster.policy_module's shared-weight one."""
    if cfg.q_network != "per_candidate":
        return {"model_config": _model_config(cfg)}
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from cluster.policy_module import PerCandidateDQNModule

    return {"rl_module_spec": RLModuleSpec(module_class=PerCandidateDQNModule),
            "model_config": {**asdict(_model_config(cfg)), "per_candidate": per_candidate_arch(cfg, spec)}}


def dqn_config(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig, spec: ObsSpec):
    from ray.rllib.algorithms.dqn import DQNConfig

    return (
        _env_and_runners(DQNConfig(), inputs, sim_cfg, cfg, spec)
        .training(lr=cfg.lr, gamma=cfg.gamma, train_batch_size=cfg.train_batch_size, n_step=cfg.n_step,
                  num_steps_sampled_before_learning_starts=cfg.learning_starts,
                  target_network_update_freq=cfg.target_update_freq, double_q=True, dueling=True,
                  epsilon=[(0, cfg.initial_epsilon), (cfg.epsilon_timesteps, cfg.final_epsilon)],
                  replay_buffer_config={"type": cfg.replay_buffer,
                                        "capacity": cfg.buffer_capacity, **_buffer_extra(cfg)})
        .rl_module(**_dqn_module(cfg, spec))
        .reporting(min_sample_timesteps_per_iteration=cfg.steps_per_iteration, min_time_s_per_iteration=None)
    )


def ppo_config(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig, spec: ObsSpec):
    """PPO: one iteration samples `steps_per_iteration` env steps and makes `ppo_num_epochs` passes over them."""
    from ray.rllib.algorithms.ppo import PPOConfig

    conf = _env_and_runners(PPOConfig(), inputs, sim_cfg, cfg, spec)
    conf.env_runners(rollout_fragment_length="auto")  # PPO cuts the batch into fragments itself
    return (
        conf.training(lr=cfg.ppo_lr, gamma=cfg.ppo_gamma, lambda_=cfg.ppo_lambda,
                      train_batch_size_per_learner=cfg.steps_per_iteration,
                      minibatch_size=min(cfg.ppo_minibatch_size, cfg.steps_per_iteration),
                      num_epochs=cfg.ppo_num_epochs, entropy_coeff=cfg.ppo_entropy_coeff,
                      clip_param=cfg.ppo_clip_param, vf_loss_coeff=cfg.ppo_vf_loss_coeff, use_kl_loss=False)
        .rl_module(model_config=_model_config(cfg))
    )


def algorithm_config(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig, spec: ObsSpec):
    return (ppo_config if cfg.algorithm == "PPO" else dqn_config)(inputs, sim_cfg, cfg, spec)


def restore_module(algo, policy_dir: Path, algorithm: str) -> None:
    """Load an exported policy's weights (policy.safetensors, RLlib parameter names) into the Learner's module and
    every EnvRunner (DQN: target net = online net). A tensor the module lacks, or of another shape, is an error."""
    from prefmine.policy.network import load_tensors

    tensors = load_tensors(policy_dir)

    def load(learner):
        module = learner.module["default_policy"]
        state = module.state_dict()
        for name, t in tensors.items():
            if name not in state or tuple(state[name].shape) != tuple(t.shape):
                raise ValueError(f"warm start {policy_dir}: tensor {name} {tuple(t.shape)} does not fit the module "
                                 f"({tuple(state[name].shape) if name in state else 'absent'})")
        module.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in tensors.items()}})
        if algorithm == "DQN":
            for online, target in module.get_target_network_pairs():
                target.load_state_dict(online.state_dict())

    algo.learner_group.foreach_learner(load)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)



def train_policy(inputs: SimulatorInputs, out_dir: Path, cfg: PolicyTrainConfig | None = None,
                 sim_cfg: SimulatorConfig | None = None, verbose: bool = True, warm_start: Path | None = None,
                 on_iteration=None, spec: ObsSpec | None = None, checkpoint_dir: str | Path | None = None) -> dict:
    """Train DQN or PPO on the simulator and export the network + policy_config.json to `out_dir`.

    warm_start: an exported policy dir to continue from; its obs spec is reused so the
    observation features keep their meaning. on_iteration(algo, row) is called after every train() (the
    benchmark evaluates there); returning True stops training. Returns the training metrics.

    checkpoint_dir: where Algorithm checkpoints go every `cfg.checkpoint_every` iterations and after the last
    (None or checkpoint_every=0: none); a folder or a URI (mirrored from a local folder, prefmine.policy.checkpoint). If it already holds a complete checkpoint of this run, training resumes
    from it (the module docstring says what is restored): metrics["resumed_from"] is its iteration and the
    history continues it. A checkpoint of a different run raises CheckpointMismatch before Ray is touched. A
    finished run's checkpoint is kept, so calling again re-exports it, or continues it if max_iterations or
    time_budget_s grew; the caller removes the folder when it no longer wants that.
    """
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = cfg or PolicyTrainConfig()
    sim_cfg = sim_cfg or train_config.preset(cfg.simulator).simulator
    module_dir = None
    if warm_start is not None:
        warm_start = Path(warm_start)
        module_dir = warm_start
        conf_path = module_dir / "policy_config.json"
        if spec is None and conf_path.is_file():
            spec = ObsSpec(**json.loads(conf_path.read_text())["obs_spec"])
    spec = spec or ObsSpec.from_inputs(inputs, sim_cfg)
    if spec.size != ObsSpec.from_inputs(inputs, sim_cfg).size:
        raise ValueError(f"train_policy: obs spec size {spec.size} does not match the simulator's")
    ckpt_dir = local_checkpoint_dir(checkpoint_dir) if checkpoint_dir is not None and cfg.checkpoint_every > 0 \
        else None
    ckpt_uri = str(checkpoint_dir) if ckpt_dir is not None and is_uri(checkpoint_dir) else None
    identity = checkpoint_identity(inputs, sim_cfg, cfg, spec) if ckpt_dir is not None else None
    resume = pull_checkpoint(ckpt_uri, ckpt_dir) if ckpt_uri else find_checkpoint(ckpt_dir)
    saved = read_checkpoint_state(resume) if resume is not None else None
    if saved is not None:
        check_resumable(saved, identity, resume)
    start = saved["iteration"] if saved else 0
    _ensure_ray()
    # a resumed run's simulators and sampler are rebuilt: seeding them as the first start did would replay the
    # sessions of iteration 1, so they draw from seed + iteration
    build_cfg = replace(cfg, seed=cfg.seed + 1_000 * start) if start else cfg
    algo = algorithm_config(inputs, sim_cfg, build_cfg, spec).build_algo()
    history, elapsed0, last_ckpt, stopped = [], 0.0, resume, False
    try:
        if saved is not None:
            algo.restore_from_path(str(resume.resolve()))
            buffer = getattr(algo, "local_replay_buffer", None)
            restored_buffer = None
            if buffer is not None and (resume / REPLAY_BUFFER_FILE).is_file():
                with open(resume / REPLAY_BUFFER_FILE, "rb") as f:
                    buffer.set_state(pickle.load(f))
                restored_buffer = int(buffer.get_num_timesteps())
            history, elapsed0 = list(saved["history"]), float(saved["elapsed_s"])
            stopped = bool(saved.get("stopped"))
            print(f"[policy {cfg.algorithm}] resumed from iteration {start} (checkpoint {resume}; "
                  f"{elapsed0:.0f}s trained, {saved.get('env_steps', 0)} env steps"
                  + (f", replay buffer {restored_buffer} steps" if restored_buffer is not None else "") + ")",
                  flush=True)
        elif module_dir is not None:
            restore_module(algo, module_dir, cfg.algorithm)
        t0 = time.time() - elapsed0
        done = stopped or start >= cfg.max_iterations or elapsed0 >= cfg.time_budget_s
        it = start
        while not done:
            it += 1
            res = algo.train()
            env = res.get("env_runners", {})
            row = {"iteration": it, "seconds": round(time.time() - t0, 1),
                   "env_steps": int(res.get("num_env_steps_sampled_lifetime",
                                            env.get("num_env_steps_sampled_lifetime", 0)) or 0),
                   "episode_return_mean": _f(env.get("episode_return_mean")),
                   "episode_len_mean": _f(env.get("episode_len_mean"))}
            history.append(row)
            stopped = bool(on_iteration(algo, row)) if on_iteration is not None else False
            if verbose:
                eta = (time.time() - t0) / it * (cfg.max_iterations - it)
                print(f"[policy {cfg.algorithm}] iter {it}/{cfg.max_iterations} steps {row['env_steps']} "
                      f"return {row['episode_return_mean']} ({row['seconds']:.0f}s, eta<={eta:.0f}s)", flush=True)
            done = stopped or it >= cfg.max_iterations or time.time() - t0 >= cfg.time_budget_s
            if ckpt_dir is not None and (done or it % cfg.checkpoint_every == 0):
                last_ckpt = save_checkpoint(
                    algo, ckpt_dir, {**identity, "iteration": it, "elapsed_s": round(time.time() - t0, 3),
                                     "env_steps": row["env_steps"], "stopped": stopped, "history": history,
                                     "resumed_from": start or None, "train": asdict(cfg),
                                     "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    replay_buffer=cfg.checkpoint_replay_buffer)
                if ckpt_uri:  # a driver restarted on another node resumes from the store
                    push_checkpoint(last_ckpt, ckpt_uri)
        metrics = {"algorithm": cfg.algorithm, "train_seconds": round(time.time() - t0, 1),
                   "iterations": len(history), "env_steps": history[-1]["env_steps"] if history else 0,
                   "warm_start": str(warm_start) if warm_start is not None else None,
                   "resumed_from": start or None, "checkpoint": (join(ckpt_uri, last_ckpt.name) if ckpt_uri else str(last_ckpt))
                   if last_ckpt else None,
                   "history": history}
        save_policy(algo.get_module(), out_dir, inputs, sim_cfg, cfg, spec, metrics)
    finally:
        algo.stop()
    return metrics


def gate_trained_policy(inputs: SimulatorInputs, policy_dir: Path, n_sessions: int = 1000, seed: int = 0,
                        verbose: bool = True) -> dict:
    """After training: the learned policy against greedy, popularity and a mix tuned on other seeded sessions
    (`prefmine.policy.gate.gate_policy`); the decision is saved as `policy_dir/gate.json` (serving reads it) and
    returned with its figures, and under `manifest_entry` as the bundle's manifest records it
    (`components.policy.gate`: the decision, the mix tuning, sessions and seed), for every writer of that entry."""
    from prefmine.policy.runtime import PolicyRuntime

    # verify_bundle=False: in the pipeline the policy sits in a staging bundle that is sealed after this stage
    decision, report = gate_policy(inputs, PolicyRuntime(policy_dir, verify_bundle=False), n_sessions, seed=seed)
    decision.save(policy_dir)
    report["manifest_entry"] = {**report["decision"], "alpha_tuning": report["mix_tuning"],
                                "sessions": report["sessions"], "seed": report["seed"]}
    if verbose:
        print(format_evaluation(report["policies"]), flush=True)
        print(f"[policy gate] mix alpha {report['alpha']:g} (tuned on seed {report['val_seed']}); serving "
              f"{decision.served}: {decision.reason}", flush=True)
    return report


def _f(x):
    try:
        return None if x is None or np.isnan(x) else round(float(x), 4)
    except TypeError:
        return None



def main(argv: list[str] | None = None) -> int:
    """Train a policy from a pickled SimulatorInputs (the `prefmine train policy` command builds one from the
    data and the ranker and calls `train_policy` directly)."""
    p = argparse.ArgumentParser(prog="python -m cluster.train_policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", required=True, help="pickle of a prefmine.policy.simulator.SimulatorInputs")
    p.add_argument("--out", required=True, help="policy output dir (e.g. BUNDLE/policy)")
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree (prefmine.train_config); its `policy` and `simulator` "
                   "sections apply")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="PolicyTrainConfig overrides (KEY or policy.KEY; simulator.KEY for the simulator)")
    p.add_argument("--sim-set", nargs="*", default=[], metavar="KEY=VALUE", help="SimulatorConfig overrides")
    p.add_argument("--eval-sessions", type=int, default=1000)
    p.add_argument("--json", help="write metrics + evaluation here")
    p.add_argument("--checkpoint-dir", help="Algorithm checkpoints (every `checkpoint_every` iterations), a folder "
                   "or a URI (s3://...: a restart on another machine resumes too); a restarted command resumes "
                   "from the newest complete one. Default: OUT.checkpoints beside --out; 'none': no checkpoints")
    p.add_argument("--fresh", action="store_true", help="remove the checkpoint dir first: start over")
    args = p.parse_args(argv)
    try:
        tree = train_config.load(args.preset, args.config, train_config.in_section("policy", args.set)
                                 + train_config.in_section("simulator", args.sim_set))
        cfg, sim_cfg = tree.policy, tree.simulator
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(args.inputs, "rb") as f:
        inputs = pickle.load(f)
    if not isinstance(inputs, SimulatorInputs):
        print(f"error: --inputs {args.inputs} does not hold a SimulatorInputs", file=sys.stderr)
        return 2
    out = Path(args.out)
    ckpt_dir = None if (args.checkpoint_dir or "").lower() == "none" else (
        args.checkpoint_dir if is_uri(args.checkpoint_dir or "") else
        Path(args.checkpoint_dir or out.with_name(out.name + ".checkpoints")))
    if args.fresh and ckpt_dir is not None:
        remove_checkpoints(ckpt_dir)
    try:
        metrics = train_policy(inputs, out, cfg, sim_cfg, checkpoint_dir=ckpt_dir)
    except CheckpointMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gate = gate_trained_policy(inputs, out, args.eval_sessions, seed=cfg.seed)
    if args.json:
        Path(args.json).write_text(json.dumps({"train": metrics, "policies": gate["policies"], "gate": gate},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
