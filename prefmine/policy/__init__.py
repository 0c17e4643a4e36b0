"""The recommendation policy: a held-out user response model, a session simulator for RLlib, off-policy
estimates on logged data, the exported policy network (safetensors + JSON, no pickle) and the serve-time runtime
that loads it (`runtime.py`, with `save_policy`), the training settings (`config.py`), checkpoint bookkeeping
(`checkpoint.py`), the evaluation statistics (`evaluation.py`) and the simulator's inputs from a dataset and a
bundle (`inputs.py`). The RLlib wiring (DQN, PPO) lives in `cluster/train_policy.py`, the incremental update
from serving feedback in `cluster/update_policy.py`."""

from prefmine.policy.offpolicy import CAVEATS, off_policy_estimates
from prefmine.policy.response import ResponseModel, auc, fit_response_model, load_response, save_response
from prefmine.policy.simulator import (
    ObsSpec,
    RecSimEnv,
    SimulatorConfig,
    SimulatorInputs,
    build_obs,
    build_simulator_inputs,
)

__all__ = [
    "CAVEATS", "load_response", "off_policy_estimates", "save_response", "ObsSpec", "RecSimEnv", "ResponseModel", "SimulatorConfig", "SimulatorInputs", "auc",
    "build_obs", "build_simulator_inputs", "fit_response_model",
]
