"""The recommendation policy: a held-out user response model, a session simulator for RLlib, and the serve-time
runtime that loads the trained RLModule. Training itself lives in `cluster/train_policy.py` (RLlib)."""

from prefmine.policy.response import ResponseModel, auc, fit_response_model
from prefmine.policy.simulator import (
    SIMULATOR_PRESETS,
    ObsSpec,
    RecSimEnv,
    SimulatorConfig,
    SimulatorInputs,
    build_obs,
    build_simulator_inputs,
    simulator_config,
)

__all__ = [
    "SIMULATOR_PRESETS", "ObsSpec", "RecSimEnv", "ResponseModel", "SimulatorConfig", "SimulatorInputs", "auc",
    "build_obs", "build_simulator_inputs", "fit_response_model", "simulator_config",
]
