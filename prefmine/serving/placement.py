"""Where the Serve application's replicas run on a multi-node cluster, and where its proxy listens.

An operator of `prefmine serve` on a `ray start` cluster places each deployment's replicas with Ray's own
means: custom resources each replica asks for (the nodes that advertise them, e.g. `ray start --resources
'{"worker_node": 1}'`), a fixed replica count and a cap on replicas per node (Serve spreads them over the
nodes); `proxy_location` says which nodes run Serve's proxy. ``HeadOnly`` is what several nodes sharing one
address need (every proxy binds the same gRPC port, so a second node on the same machine, or behind one
address, cannot start its own); ``EveryNode`` (Serve's default) is what a load balancer over several machines
needs. `serve deploy serve/config.yaml` sets the same things in Serve's own fields (`proxy_location`,
`num_replicas`, `max_replicas_per_node`, `ray_actor_options.resources`); this module is the `prefmine serve
--placement FILE` form of them, checked before anything is deployed (unknown deployments or keys are an error
that names them).

The file (YAML/JSON)::

    proxy_location: HeadOnly
    deployments:
      RankerDeployment: {num_replicas: 2, max_replicas_per_node: 1}
      EncoderDeployment: {resources: {worker_node: 1}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefmine import config as C

DEPLOYMENTS = ("RecommenderIngress", "RankerDeployment", "EncoderDeployment")
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


@dataclass(frozen=True)
class ReplicaPlacement:
    """One deployment's placement. num_replicas: a fixed replica count (None: the deployment's own setting);
    max_replicas_per_node: at most this many of its replicas on one node (None: no cap), which spreads them over
    the nodes; resources: custom resources each replica asks for besides its CPUs (only nodes advertising them
    take it)."""

    num_replicas: int | None = None
    max_replicas_per_node: int | None = None
    resources: dict[str, float] = field(default_factory=dict)

    def deployment_options(self, ray_actor_options: dict | None) -> dict[str, Any]:
        """The keyword arguments of Serve's ``Deployment.options`` for this placement, the deployment's own
        ``ray_actor_options`` (its CPUs) kept and the resources added to theirs."""
        out: dict[str, Any] = {}
        if self.num_replicas is not None:
            out["num_replicas"] = self.num_replicas
        if self.max_replicas_per_node is not None:
            out["max_replicas_per_node"] = self.max_replicas_per_node
        if self.resources:
            actor = dict(ray_actor_options or {})
            actor["resources"] = {**(actor.get("resources") or {}), **self.resources}
            out["ray_actor_options"] = actor
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"num_replicas": self.num_replicas, "max_replicas_per_node": self.max_replicas_per_node,
                "resources": dict(self.resources)}


@dataclass(frozen=True)
class ServePlacement:
    """proxy_location: EveryNode (Serve's default) or HeadOnly; deployments: {deployment name: ReplicaPlacement}
    for those placed (the others keep their defaults)."""

    proxy_location: str = "EveryNode"
    deployments: dict[str, ReplicaPlacement] = field(default_factory=dict)

    def options_for(self, name: str, ray_actor_options: dict | None) -> dict[str, Any]:
        placed = self.deployments.get(name)
        return placed.deployment_options(ray_actor_options) if placed else {}

    def deployments_dict(self) -> dict[str, dict[str, Any]]:
        """The deployments part, as the `placement` argument of ``serve.app:build_app`` takes it."""
        return {name: p.to_dict() for name, p in self.deployments.items()}


def _count(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise C.ConfigError(f"placement key {key!r}: expected an integer >= 1, got {value!r}")
    return value


def replica_placement(name: str, raw: Any) -> ReplicaPlacement:
    """One deployment's placement from its mapping; ConfigError naming the deployment and key otherwise."""
    if name not in DEPLOYMENTS:
        raise C.ConfigError(f"placement: unknown deployment {name!r}; known: {', '.join(DEPLOYMENTS)}")
    raw = raw or {}
    if not isinstance(raw, dict):
        raise C.ConfigError(f"placement of {name}: expected a mapping, got {raw!r}")
    known = {"num_replicas", "max_replicas_per_node", "resources"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise C.ConfigError(f"placement of {name}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    if raw.get("resources") is not None and not isinstance(raw["resources"], dict):
        raise C.ConfigError(f"placement key '{name}.resources': expected a mapping, e.g. {{worker_node: 1}}")
    return ReplicaPlacement(num_replicas=_count(raw.get("num_replicas"), f"{name}.num_replicas"),
                            max_replicas_per_node=_count(raw.get("max_replicas_per_node"),
                                                         f"{name}.max_replicas_per_node"),
                            resources=C.resource_map(raw.get("resources") or {}, f"{name}.resources"))


def placement_from(raw: dict[str, Any] | None) -> ServePlacement:
    """A ServePlacement from its mapping (``proxy_location``, ``deployments``), checked."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise C.ConfigError(f"placement: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"proxy_location", "deployments"})
    if unknown:
        raise C.ConfigError(f"placement: unknown key(s) {unknown}; known keys: ['deployments', 'proxy_location']")
    proxy = raw.get("proxy_location", ServePlacement.proxy_location)
    if proxy not in PROXY_LOCATIONS:
        raise C.ConfigError(f"placement key 'proxy_location': one of {', '.join(PROXY_LOCATIONS)}, got {proxy!r}")
    deployments = raw.get("deployments") or {}
    if not isinstance(deployments, dict):
        raise C.ConfigError("placement key 'deployments': expected a mapping of deployment name to placement")
    return ServePlacement(proxy, {name: replica_placement(name, d) for name, d in deployments.items()})


def load_placement(path: str | Path | None) -> ServePlacement:
    """The placement file at `path` (YAML/JSON), or the defaults when `path` is None."""
    return placement_from(C.load_file(path)) if path else ServePlacement()
