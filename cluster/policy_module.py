"""The per-candidate Q-network inside RLlib's DQN (`policy: {network: per_candidate}`): RLlib's default DQN
module with its encoder and heads swapped for prefmine.policy.network's shared-weight parts, so DQN's double-Q,
dueling combination, target networks, epsilon-greedy and checkpoints all work unchanged. The network itself
(and its export) lives in prefmine.policy.network; this is the wiring.
"""

from __future__ import annotations

from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.utils.schedules.scheduler import Scheduler
from torch import nn

from prefmine.policy.network import per_candidate_modules


class _Encoder(nn.Module):
    """RLlib's encoder contract: batch dict in, {ENCODER_OUT: [B, N, H]} out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, batch):
        return {ENCODER_OUT: self.net(batch[Columns.OBS])}


class PerCandidateDQNModule(DefaultDQNTorchRLModule):
    """model_config["per_candidate"] = {dim, n_candidates, state_hidden, hiddens}; dueling, no distributional Q."""

    def setup(self):
        self.uses_dueling = bool(self.model_config.get("dueling"))
        self.uses_double_q = bool(self.model_config.get("double_q"))
        self.num_atoms = int(self.model_config.get("num_atoms", 1))
        if self.num_atoms != 1 or not self.uses_dueling:
            raise ValueError("per-candidate DQN: expects dueling=True and num_atoms=1")
        self.epsilon_schedule = Scheduler(fixed_value_or_schedule=self.model_config["epsilon"],
                                          framework=self.framework)
        arch = self.model_config["per_candidate"]
        enc, self.af, self.vf = per_candidate_modules(arch["dim"], arch["n_candidates"], arch["state_hidden"],
                                                      arch["hiddens"])
        self.encoder = _Encoder(enc)
