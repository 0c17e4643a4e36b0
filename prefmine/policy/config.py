"""Policy settings: `PolicyTrainConfig` (training) and `UpdateConfig` (the incremental update job).

Plain data, no Ray: the training wiring (`cluster/train_policy.py`) builds RLlib configs from it, the update job
(`cluster/update_policy.py`) derives its warm-start config from it, and the exported policy records it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefmine.config import ConfigError


@dataclass(frozen=True)
class PolicyTrainConfig:
    """Policy training settings (presets in prefmine.train_config); `simulator` names the preset whose simulator
    settings it was made for (recorded with the policy; the simulator section of the config tree is what runs).

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
    # "flat": RLlib's MLP over the whole obs, one output per candidate slot; "per_candidate": one small MLP with
    # shared weights scores each candidate from [state summary, its features, step] (prefmine.policy.network).
    # DQN's Q-network only: PPO keeps its flat MLP whatever this says (`q_network` is what is built)
    network: str = "flat"
    state_hidden: int = 32  # per_candidate: width of the user-state summary every candidate's score sees
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
    gate_sessions: int = 1000  # simulator sessions per policy for the gate (learned vs heuristics, policy/gate.json)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"policy config key 'algorithm': {self.algorithm!r}; choose one of {list(ALGORITHMS)}")
        if self.network not in ("flat", "per_candidate"):
            raise ConfigError(f"policy config key 'network': {self.network!r}; 'flat' or 'per_candidate'")
        if not isinstance(self.gate_sessions, int) or self.gate_sessions < 2:
            raise ConfigError(f"policy config key 'gate_sessions': {self.gate_sessions!r}; an int >= 2")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"policy config key 'checkpoint_every': {self.checkpoint_every!r}; an int >= 0")


    @property
    def q_network(self) -> str:
        """The network actually built: `network` for DQN, "flat" for PPO."""
        return self.network if self.algorithm == "DQN" else "flat"


ALGORITHMS = ("DQN", "PPO")


@dataclass(frozen=True)
class UpdateConfig:
    """The incremental update job's settings (cluster/update_policy.py: policy, ranker, and the update loop's
    guard); presets in prefmine.train_config."""

    max_iterations: int = 4  # policy train() calls after the warm start (0: re-export the warm-started module)
    time_budget_s: float = 120.0
    min_events: int = 1  # fewer new feedback events than this: no new bundle
    initial_epsilon: float = 0.2  # DQN: exploration restarts here, not at 1.0
    epsilon_timesteps: int = 2000
    learning_starts: int = 200
    buy_prior: float = 20.0  # pseudo-counts of the serving purchase rate against the new events
    page_size: int = 50_000  # feedback rows read per query
    seed_offset: int = 1  # the update's RL seed = the serving policy's seed + this
    gate_sessions: int = 0  # simulator sessions per policy for the new version's gate; 0: the serving policy's
    # the ranker's incremental update (prefmine.update.ranker): the serving weights fine-tuned on the updated
    # histories (never the guard's held-out events), the retrieval index rebuilt
    # True: the candidate fine-tunes the serving ranker on the new events. Off by default: on the tiny Magazine loop
    # the fine-tuned ranker loses on the guard's held-out clicks, which the serving ranker's own slates selected
    # (bench/results/ranker_update.json), so every candidate, its policy update included, would be refused
    ranker: bool = False
    ranker_steps: int = 100  # optimizer steps (batches of the ranker's own batch size)
    ranker_lr: float = 3e-4  # Adam, a fresh optimizer state
    # the update loop's guard (prefmine.update.guard): a candidate rolls in when, on the impressions and held-out
    # events since the last round, every paired difference candidate - serving has a 95% low >= -tolerance
    guard_ope_tolerance: float = 0.01  # per-slot click rate (SNIPS, DR)
    guard_rank_tolerance: float = 0.01  # NDCG@k, Recall@k on each user's last new interaction
    guard_min_units: int = 20  # fewer impressions (held-out users) than this: that family is not judged
    guard_k: int = 10
    guard_candidates: int = 100  # ranker top-n each version's slate is chosen from
    guard_n_boot: int = 500
    guard_max_impressions: int = 5000  # the newest impressions judged per round
    # a metric whose 95% half-width exceeds this many times its tolerance only refuses a candidate it shows worse
    # (too few units to show "not worse"; prefmine.update.guard); 0: every metric decides as before
    guard_decisive_factor: float = 1.0

    def guard_rule(self):
        from prefmine.update.guard import GuardRule

        return GuardRule(ope_tolerance=self.guard_ope_tolerance, rank_tolerance=self.guard_rank_tolerance,
                         min_units=self.guard_min_units, k=self.guard_k, candidates=self.guard_candidates,
                         n_boot=self.guard_n_boot, decisive_factor=self.guard_decisive_factor)

    def ranker_update(self):
        from prefmine.update.ranker import RankerUpdate

        return RankerUpdate(steps=self.ranker_steps, lr=self.ranker_lr, seed=self.seed_offset)

    def __post_init__(self):
        if not isinstance(self.ranker_steps, int) or isinstance(self.ranker_steps, bool) or self.ranker_steps < 0:
            raise ConfigError(f"update config key 'ranker_steps': {self.ranker_steps!r}; an int >= 0")
        if not float(self.ranker_lr) > 0:
            raise ConfigError(f"update config key 'ranker_lr': {self.ranker_lr!r}; a number > 0")
        if not isinstance(self.gate_sessions, int) or not (self.gate_sessions == 0 or self.gate_sessions >= 2):
            raise ConfigError(f"update config key 'gate_sessions': {self.gate_sessions!r}; 0 (the serving "
                              "policy's) or an int >= 2")
        self.guard_rule()  # a bad guard_* value is a ConfigError naming the key
