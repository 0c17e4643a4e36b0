"""Running on a real cluster: ray_cluster.yaml passes Ray's own launcher validation, and `prefmine jobs` refuses a
bad submission. The pipeline submitted as a job (the session's tiny bundle, on two nodes) is checked in
tests/test_multinode.py."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from live_server import prefmine_cli

ROOT = Path(__file__).resolve().parents[1]


def launcher_config(cfg: dict) -> dict:
    """What `ray up` does with the file before it starts anything: fill defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_launcher_validation():
    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cfg = launcher_config(raw)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0, "the head is a CPU node"
    assert gpu and all(t["resources"].get("GPU", 0) >= 1 for t in gpu), "a GPU worker type"
    assert all(t["min_workers"] == 0 < t["max_workers"] for t in gpu), "GPU workers autoscale from zero"
    assert any("bootstrap.sh" in c for c in cfg["setup_commands"]), "nodes install the project like a laptop"
    assert "." in cfg["file_mounts"].values(), "the project is mounted on every node"
    assert any("bundle" in k for k in cfg["file_mounts"]), "a file mount for the bundle store"
    # the validation is real: a broken copy is refused
    for breaks in (lambda c: c.update(head_node_type="nope"),
                   lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="two")):
        bad = copy.deepcopy(raw)
        breaks(bad)
        with pytest.raises((ValueError, jsonschema.ValidationError)):
            launcher_config(bad)


prefmine = prefmine_cli


def test_jobs_cli_rejects_an_empty_entrypoint(ray_head):
    run = prefmine("jobs", "submit", "--address", ray_head, "--")
    assert run.returncode != 0 and "entrypoint is empty" in run.stderr
