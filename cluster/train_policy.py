"""Train the recommendation policy with RLlib (DQN or PPO) on the user simulator, export it, and evaluate it.

`train_policy` builds a DQN (double, dueling Q-learning) or a PPO (clipped policy gradient with a value
baseline) on `RecSimEnv`, both on RLlib's new API stack (RLModule + Learner + EnvRunner), trains for a
time/iteration budget with a small rollout fragment and train batch (RLlib's DQN defaults make one iteration take
~40 s on 2 cores), and exports the policy network so that `prefmine.policy.runtime.PolicyRuntime` can load it
without RLlib and without unpickling anything (an RLModule checkpoint is loaded by unpickling its class):

    out_dir/policy.safetensors    the network's weights (prefmine.policy.network.export_network)
    out_dir/network.json          its architecture: algorithm, obs and action sizes, layers in order
    out_dir/policy_config.json    simulator config, obs spec and layout, N, training metrics
    out_dir/item_vectors.npy      the ranker item vectors the policy was trained against (obs feature)
    out_dir/item_popularity.npy   train counts (obs feature)

`evaluate_policies` runs the learned, greedy (ranker's top item), popularity and random policies on the same
seeded simulated sessions and reports return mean, CTR and conversion, each with a 95% CI, and the paired
difference of every policy's return against greedy.

`warm_start` continues from an exported policy (the incremental update job, `cluster/update_policy.py`): its
safetensors weights are loaded into the Learner's module (DQN: target network synced to them) and broadcast to
the EnvRunners before the first sample. Padded candidate slots are not masked inside RLlib (both algorithms learn from the
PAD_SCORE features that a padded slot shows nothing); `PolicyRuntime` and the evaluation mask them.

Checkpoints and resume (`checkpoint_dir`, `PolicyTrainConfig.checkpoint_every`): every `checkpoint_every`
iterations and after the last one the whole Algorithm is saved with `Algorithm.save_to_path` (RLlib's new-stack
Checkpointable format: LearnerGroup with the RLModule, target network and optimizer state, the local EnvRunner
with its connectors and its env-step counter, the Algorithm's MetricsLogger and training iteration) to
`checkpoint_dir/.iter_NNNNNN.*.tmp`, plus `prefmine_checkpoint.json` (iteration, elapsed seconds, the history
rows, and what the run must match: algorithm, obs spec, network, simulator config, a fingerprint of the
SimulatorInputs) written last; the folder is then renamed to `iter_NNNNNN`. Only the last two are kept. A folder
without the completed JSON (a driver killed mid-write) is ignored. A later call with the same `checkpoint_dir`
builds the algorithm from its config, `restore_from_path`s the newest complete checkpoint, and continues at
iteration N+1; the time budget counts the seconds already spent, and the history holds every iteration once.
A checkpoint of another algorithm, obs spec, network, simulator or data is refused (`CheckpointMismatch`), never
loaded into the wrong run. What survives a resume, measured on ray 2.60 (tests/test_policy_resume.py):

- RLModule weights, DQN target network, optimizer state, `training_iteration`: restored by `restore_from_path`.
- Env-step counters: `num_env_steps_sampled_lifetime` (MetricsLogger and the EnvRunner's own count) continues
  from the checkpoint, so DQN's epsilon schedule (driven by the EnvRunner's lifetime count), learning-starts
  and target-update timing continue rather than restart at 0.
- DQN replay buffer: *not* in RLlib's Algorithm checkpoint on the new API stack (`Algorithm.get_state` leaves
  `local_replay_buffer` out; only the old stack had `store_buffer_in_checkpoints`). With
  `checkpoint_replay_buffer` (default on) its `get_state()` is pickled beside the checkpoint and `set_state()`
  restores it; off, a resumed DQN learns at once (the counters are past learning-starts) from a nearly empty
  buffer.
- Not restored: the simulators' and the sampler's random streams (the env runner is rebuilt from the seed). A
  resumed run therefore draws from seed + iteration (not the original seed, which would replay the first
  iteration's sessions) and is not bit-identical to an uninterrupted one.

The caller owns Ray: if it is not initialised, a local one is started (2 CPUs, one OMP thread per worker).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from prefmine.config import ConfigError, load_file, parse_overrides, resolve
from prefmine.policy.network import export_network
from prefmine.policy.response import save_response
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
    """Policy training settings. Presets: `POLICY_PRESETS`; `simulator` names the SimulatorConfig preset.

    `algorithm` picks DQN or PPO; the `ppo_*` fields apply to PPO only, the epsilon/replay fields to DQN only.
    """

    algorithm: str = "DQN"  # "DQN" (Q-learning family) or "PPO"
    simulator: str = "tiny"
    max_iterations: int = 12
    time_budget_s: float = 100.0  # stop after the iteration that crosses this
    steps_per_iteration: int = 1000  # env steps sampled per train() call (PPO: its train batch)
    rollout_fragment_length: int = 5  # per env: 5 x 4 envs = 20 env steps per training step (50 updates/1000 steps)
    num_envs_per_env_runner: int = 4  # vectorised envs batch the module's inference (RLlib's per-step overhead)
    train_batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.5  # sessions are short; the immediate click dominates
    hiddens: tuple = (64, 64)
    epsilon_timesteps: int = 4000
    initial_epsilon: float = 1.0  # a warm start (update job) begins lower: the policy already knows something
    final_epsilon: float = 0.05
    learning_starts: int = 500
    target_update_freq: int = 500
    buffer_capacity: int = 50_000
    replay_buffer: str = "EpisodeReplayBuffer"  # uniform; "PrioritizedEpisodeReplayBuffer" samples ~10x slower
    n_step: int = 1
    ppo_lr: float = 3e-4
    ppo_gamma: float = 0.9  # PPO's GAE works with the longer horizon; DQN's bootstrapping prefers the short one
    ppo_lambda: float = 0.95
    ppo_minibatch_size: int = 128
    ppo_num_epochs: int = 6
    ppo_entropy_coeff: float = 0.01
    ppo_clip_param: float = 0.2
    ppo_vf_loss_coeff: float = 0.5
    num_env_runners: int = 0  # 0: sample in the driver's local env runner (cheapest on a small machine)
    seed: int = 0
    checkpoint_every: int = 1  # iterations between Algorithm checkpoints (given a checkpoint_dir); 0: none, no resume
    checkpoint_replay_buffer: bool = True  # DQN: save the replay buffer too (RLlib's checkpoint leaves it out)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"policy config key 'algorithm': {self.algorithm!r}; choose one of {list(ALGORITHMS)}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"policy config key 'checkpoint_every': {self.checkpoint_every!r}; an int >= 0")


ALGORITHMS = ("DQN", "PPO")

POLICY_PRESETS = {
    "tiny": PolicyTrainConfig(),
    "base": PolicyTrainConfig(simulator="base", max_iterations=100, time_budget_s=1800.0, hiddens=(256, 256),
                              train_batch_size=256, rollout_fragment_length=32, epsilon_timesteps=30_000,
                              learning_starts=2000, target_update_freq=2000, num_env_runners=2,
                              ppo_minibatch_size=256, checkpoint_every=5),
    "large": PolicyTrainConfig(simulator="large", max_iterations=500, time_budget_s=4 * 3600.0,
                               hiddens=(512, 512), train_batch_size=512, rollout_fragment_length=64,
                               epsilon_timesteps=200_000, learning_starts=10_000, target_update_freq=8000,
                               buffer_capacity=500_000, num_env_runners=8, steps_per_iteration=4000,
                               ppo_minibatch_size=512, checkpoint_every=10),
}


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
        .rl_module(model_config=_model_config(cfg))
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


CHECKPOINT_FORMAT = "prefmine-policy-checkpoint/1"
CHECKPOINT_STATE = "prefmine_checkpoint.json"  # written last: its presence (complete: true) marks a checkpoint done
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
KEEP_CHECKPOINTS = 2
_CKPT_RE = re.compile(r"iter_(\d{6,})")


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another run (algorithm, obs spec, network, simulator or data differ)."""


def inputs_fingerprint(inputs: SimulatorInputs) -> str:
    """sha1 of what the simulator is built from (states, vectors, popularity, histories, response model)."""
    h = hashlib.sha1()
    for a in (inputs.user_states, inputs.item_vectors, inputs.item_popularity, inputs.response.item_emb,
              inputs.response.buy_prob, inputs.response.weights):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    lengths = np.array([len(x) for x in inputs.user_histories], dtype=np.int64)
    h.update(lengths.data)
    if len(lengths):
        h.update(np.ascontiguousarray(np.concatenate(inputs.user_histories).astype(np.int64)).data)
    return h.hexdigest()


def checkpoint_identity(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig,
                        spec: ObsSpec) -> dict:
    """What a run must share with a checkpoint to resume it (JSON types, so it compares with the saved copy)."""
    ident = {"format": CHECKPOINT_FORMAT, "algorithm": cfg.algorithm, "obs_size": spec.size,
             "obs_spec": spec.to_dict(), "hiddens": list(cfg.hiddens), "simulator": asdict(sim_cfg),
             "replay_buffer": cfg.replay_buffer if cfg.algorithm == "DQN" else None,
             "inputs_sha1": inputs_fingerprint(inputs)}
    return json.loads(json.dumps(ident))


def read_checkpoint_state(path: Path) -> dict | None:
    """The checkpoint's state JSON if the checkpoint is complete, else None."""
    try:
        state = json.loads((Path(path) / CHECKPOINT_STATE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and state.get("complete") is True and isinstance(state.get("iteration"), int)
    return state if ok else None


def find_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    """The newest complete `iter_NNNNNN` checkpoint in `checkpoint_dir`; None when there is none. Temp folders
    and `iter_*` folders without a completed state JSON (a driver killed mid-write) are ignored."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for p in Path(checkpoint_dir).iterdir():
        if p.is_dir() and _CKPT_RE.fullmatch(p.name):
            state = read_checkpoint_state(p)
            if state is not None:
                found.append((state["iteration"], p))
    return max(found)[1] if found else None


def check_resumable(state: dict, identity: dict, path: Path) -> None:
    """Raise CheckpointMismatch naming every field in which the checkpoint differs from this run."""
    diffs = []
    for key, want in identity.items():
        have = state.get(key)
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            sub = [f"{key}.{k}: checkpoint {have.get(k)!r}, this run {want.get(k)!r}"
                   for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
            diffs += sub
        else:
            diffs.append(f"{key}: checkpoint {have!r}, this run {want!r}")
    if diffs:
        raise CheckpointMismatch(
            f"policy checkpoint {path} was written by a different run and is not resumed: " + "; ".join(diffs)
            + f". Use another checkpoint_dir (CLI: --checkpoint-dir, or --fresh) or remove {Path(path).parent}")


def save_checkpoint(algo, checkpoint_dir: Path, state: dict, replay_buffer: bool = True) -> Path:
    """Write `checkpoint_dir/iter_NNNNNN` (NNNNNN = state["iteration"]): the Algorithm (`save_to_path`), the DQN
    replay buffer, and the state JSON last, all in a temp folder renamed into place; keep the newest
    KEEP_CHECKPOINTS complete ones and remove leftovers of killed writes."""
    d = Path(checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"iter_{state['iteration']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=d))
    try:
        algo.save_to_path(str(tmp.resolve()))
        buffer = getattr(algo, "local_replay_buffer", None)
        if replay_buffer and buffer is not None:
            with open(tmp / REPLAY_BUFFER_FILE, "wb") as f:
                pickle.dump(buffer.get_state(), f, protocol=pickle.HIGHEST_PROTOCOL)
            state = {**state, "replay_buffer_timesteps": int(buffer.get_num_timesteps())}
        (tmp / (CHECKPOINT_STATE + ".tmp")).write_text(json.dumps({**state, "complete": True}))
        os.replace(tmp / (CHECKPOINT_STATE + ".tmp"), tmp / CHECKPOINT_STATE)
        if final.exists():  # an incomplete folder of that name (never a complete one: iterations only grow)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    complete = sorted((read_checkpoint_state(p)["iteration"], p) for p in d.iterdir()
                      if p.is_dir() and _CKPT_RE.fullmatch(p.name) and read_checkpoint_state(p) is not None)
    for _, old in complete[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    for p in d.iterdir():  # temp folders of killed writes, and iter_* folders that never completed
        if p.is_dir() and p != final and ((p.name.startswith(".iter_") and p.name.endswith(".tmp"))
                                          or (_CKPT_RE.fullmatch(p.name) and read_checkpoint_state(p) is None)):
            shutil.rmtree(p, ignore_errors=True)
    return final


def train_policy(inputs: SimulatorInputs, out_dir: Path, cfg: PolicyTrainConfig | None = None,
                 sim_cfg: SimulatorConfig | None = None, verbose: bool = True, warm_start: Path | None = None,
                 on_iteration=None, spec: ObsSpec | None = None, checkpoint_dir: Path | None = None) -> dict:
    """Train DQN or PPO on the simulator and export the network + policy_config.json to `out_dir`.

    warm_start: an exported policy dir to continue from; its obs spec is reused so the
    observation features keep their meaning. on_iteration(algo, row) is called after every train() (the
    benchmark evaluates there); returning True stops training. Returns the training metrics.

    checkpoint_dir: where Algorithm checkpoints go every `cfg.checkpoint_every` iterations and after the last
    (None or checkpoint_every=0: none). If it already holds a complete checkpoint of this run, training resumes
    from it (the module docstring says what is restored): metrics["resumed_from"] is its iteration and the
    history continues it. A checkpoint of a different run raises CheckpointMismatch before Ray is touched. A
    finished run's checkpoint is kept, so calling again re-exports it, or continues it if max_iterations or
    time_budget_s grew; the caller removes the folder when it no longer wants that.
    """
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = cfg or POLICY_PRESETS["tiny"]
    sim_cfg = sim_cfg or SIMULATOR_PRESETS[cfg.simulator]
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
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None and cfg.checkpoint_every > 0 else None
    identity = checkpoint_identity(inputs, sim_cfg, cfg, spec) if ckpt_dir is not None else None
    resume = find_checkpoint(ckpt_dir)
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
        metrics = {"algorithm": cfg.algorithm, "train_seconds": round(time.time() - t0, 1),
                   "iterations": len(history), "env_steps": history[-1]["env_steps"] if history else 0,
                   "warm_start": str(warm_start) if warm_start is not None else None,
                   "resumed_from": start or None, "checkpoint": str(last_ckpt) if last_ckpt else None,
                   "history": history}
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
        export_network(module, cfg.algorithm, tmp)
        np.save(tmp / "item_vectors.npy", np.asarray(inputs.item_vectors, dtype=np.float32))
        np.save(tmp / "item_popularity.npy", np.asarray(inputs.item_popularity, dtype=np.float64))
        save_response(tmp / "response_model.npz", inputs.response)
        conf = {"format": "prefmine-policy/2", "algorithm": cfg.algorithm, "n_candidates": sim_cfg.n_candidates,
                "simulator": asdict(sim_cfg), "train": asdict(cfg), "obs_spec": spec.to_dict(),
                "obs_layout": obs_layout(spec), "obs_size": spec.size, "n_items": int(len(inputs.item_vectors)),
                "serving": {"epsilon": 0.0}, "metrics": metrics}
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
                      spec: ObsSpec | None = None) -> dict:
    """Learned vs greedy vs popularity vs random on the same seeded sessions (common random numbers).

    policy_runtime: a PolicyRuntime, a dict {name: PolicyRuntime} (several learned policies), or None (baselines
    only); a single runtime is reported as "learned". The simulator config defaults to the one the (first)
    policy was trained with. Every policy gets `summarise_sessions`' figures plus `vs_greedy` = the mean paired
    difference of session return against greedy on the same sessions and its 95% CI (the same seeds give both
    policies the same users and random draws, so the paired interval is tighter than the two separate ones).
    include_oracle adds "oracle_myopic": it reads the response model and shows the candidate with the highest
    expected immediate reward (a reference, not a deployable policy).
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
    p.add_argument("--eval-sessions", type=int, default=1000)
    p.add_argument("--json", help="write metrics + evaluation here")
    p.add_argument("--checkpoint-dir", help="Algorithm checkpoints (every `checkpoint_every` iterations); a "
                   "restarted command resumes from the newest complete one. Default: OUT.checkpoints beside "
                   "--out; 'none': no checkpoints")
    p.add_argument("--fresh", action="store_true", help="remove the checkpoint dir first: start over")
    args = p.parse_args(argv)
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
    out = Path(args.out)
    ckpt_dir = None if (args.checkpoint_dir or "").lower() == "none" else Path(
        args.checkpoint_dir or out.with_name(out.name + ".checkpoints"))
    if args.fresh and ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    try:
        metrics = train_policy(inputs, out, cfg, sim_cfg, checkpoint_dir=ckpt_dir)
    except CheckpointMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ev = evaluate_policies(inputs, PolicyRuntime(args.out), args.eval_sessions, seed=cfg.seed, include_oracle=True)
    print(format_evaluation(ev))
    if args.json:
        Path(args.json).write_text(json.dumps({"train": metrics, "policies": ev}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
