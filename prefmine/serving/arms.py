"""A/B arms as the server runs them: which experiments it can serve, and the arm of a request's user.

An experiment (prefmine.experiments) names per arm a policy and/or a bundle version. The server orders each arm's
slates with the arm's policy (``learned`` or one of the policy gate's heuristics, prefmine.serving.policy), from
the arm's bundle version when it names one: every replica holds the versions arms pin beside the one served
(serve.app.arm_versions checks and resolves them; serve.served.RuntimeCache keeps them), so a control arm stays
on its version while the update loop rolls new ones in for everyone else.
"""

from __future__ import annotations

from typing import Any

from prefmine.experiments import Arm, ExperimentConfig, assign
from prefmine.serving.policy import SERVABLE_POLICIES


def servable_experiment(config: ExperimentConfig | dict[str, Any]) -> ExperimentConfig:
    """The experiment of a serve config, checked for what the server can do; ValueError naming the field."""
    exp = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    for i, arm in enumerate(exp.arms):
        if arm.bundle is not None and not arm.bundle.strip():
            raise ValueError(f"experiment.arms[{i}].bundle: arm {arm.name!r} names an empty bundle location")
        if arm.policy is not None and arm.policy not in SERVABLE_POLICIES:
            raise ValueError(f"experiment.arms[{i}].policy: arm {arm.name!r} asks for {arm.policy!r}; the server "
                             f"serves {', '.join(SERVABLE_POLICIES)}")
    return exp


def arm_of(experiment: ExperimentConfig | None, pseudonym: str) -> Arm | None:
    """The arm a pseudonymous user is served by (None without an experiment)."""
    return None if experiment is None else assign(pseudonym, experiment)
