"""Running on a real cluster: ray_cluster.yaml passes Ray's own launcher validation, and the pipeline submitted
through `prefmine jobs` to a real `ray start --head` (loopback, dashboard on) succeeds and writes its bundle."""

from __future__ import annotations

import copy
import json
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


@pytest.mark.cluster
def test_pipeline_submitted_as_a_job_succeeds_and_writes_the_bundle(tiny_bundle_job):
    """The session's tiny bundle is this job's output (tests/conftest.py `tiny_bundle_job`): the pipeline submitted
    through `prefmine jobs submit --wait` to a real `ray start --head` node succeeded, `jobs status` and `jobs logs`
    report it, and the job ran on the head's cluster with the project shipped as its working_dir."""
    job = tiny_bundle_job
    assert job.submit.returncode == 0, job.submit.stdout[-2000:] + job.submit.stderr[-4000:]
    assert job.job_id.startswith("raysubmit_"), job.submit.stdout[-2000:]
    updates = [ln.split(": ")[1] for ln in job.submit.stdout.splitlines() if ln.startswith(job.job_id + ":")]
    assert updates and updates[-1] == "SUCCEEDED", job.submit.stdout[-2000:]
    assert job.status.returncode == 0 and job.status.stdout.strip() == "SUCCEEDED"
    bundle = job.bundle
    assert job.logs.returncode == 0 and f"bundle written: {bundle}" in job.logs.stdout  # printed by the job's driver
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"encoder", "ranker", "policy"} <= set(manifest["components"])
    for f in ("ranker/model.pt", "policy/policy_config.json", "encoder/item_embeddings.npy"):
        assert (bundle / f).is_file(), f
    assert list(bundle.glob(".train/*/metrics.jsonl")) and not list(bundle.glob(".train/*/checkpoint_*"))
    assert job.runtime_env["working_dir"].startswith(("gcs://", "file://"))
    assert job.runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_jobs_cli_rejects_an_empty_entrypoint(ray_head):
    run = prefmine("jobs", "submit", "--address", ray_head, "--")
    assert run.returncode != 0 and "entrypoint is empty" in run.stderr
