"""The cluster's control plane is closed: ray_cluster.yaml starts every node with token auth and the dashboard
on loopback, and `prefmine jobs` against a real `ray start --head` with RAY_AUTH_MODE=token is refused without
the token, refused with a wrong one, and runs the job with the right one."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_cluster_yaml_closes_the_control_plane():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in start)
    token_path = head.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0].rstrip(";")
    assert cfg["file_mounts"].get(token_path) == "~/.ray/auth_token"  # the same token on every node
    ingress = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in ingress] == [(22, 22)]  # no Ray or metrics port from outside


def _jobs(*args: str, env: dict, home: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([str(BIN / "prefmine"), "jobs", *args], capture_output=True, text=True, timeout=300,
                          env={**base, "HOME": str(home), **env})


def test_jobs_need_the_clusters_token(ray_head_token, tmp_path):
    address, token = ray_head_token
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    # the job server itself refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert e.value.code == 401
    # token auth is the default: with no token at all the command stops before contacting the cluster
    run = _jobs("submit", "--address", address, "--", "python", "-c", "print(1)", env={}, home=home)
    assert run.returncode == 2 and "no token was found" in run.stderr
    # without auth the cluster answers 401 (Authentication required), a wrong token 403 (Authentication failed)
    run = _jobs("submit", "--address", address, "--auth", "disabled", "--", "python", "-c", "print(1)",
                env={}, home=home)
    assert run.returncode == 2 and "Authentication required" in run.stderr and "Traceback" not in run.stderr
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    run = _jobs("submit", "--address", address, "--token-file", str(wrong), "--", "python", "-c", "print(1)",
                env={}, home=home)
    assert run.returncode == 2 and "Authentication failed" in run.stderr
    # the right token: the job runs; its status and logs are read with the token too
    run = _jobs("submit", "--address", address, "--token-file", str(token), "--wait", "--timeout", "240", "--",
                "python", "-c", "print('authenticated job ran')", env={}, home=home)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    job_id = run.stdout.split()[1]
    logs = _jobs("logs", job_id, "--address", address, env={"RAY_AUTH_TOKEN_PATH": str(token)}, home=home)
    assert logs.returncode == 0 and "authenticated job ran" in logs.stdout
    st = _jobs("status", job_id, "--address", address, "--auth", "disabled", env={}, home=home)
    assert st.returncode == 2 and "Authentication required" in st.stderr


LOCAL_RAY = """
import os
from cluster.ray_env import ensure_ray
ray = ensure_ray(num_cpus=1, dashboard=False, quiet=True)
print("mode", os.environ.get("RAY_AUTH_MODE"))
print("task", ray.get(ray.remote(lambda: 41 + 1).remote()))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_starts_with_token_auth_and_a_private_token(tmp_path):
    """What `prefmine demo` and every local job do (RAY_AUTH_MODE unset): Ray's own default turns token auth on
    and makes the token, which ensure_ray leaves readable by this user only. Forcing RAY_AUTH_MODE=token after
    Ray was imported made the GCS abort for want of a token: the README's main job did not start."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                                                             "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", LOCAL_RAY], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mode token" in r.stdout and "task 42" in r.stdout
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) >= 32
    assert token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)
