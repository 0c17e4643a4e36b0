"""Verified bundles without pickles: the policy is exported as safetensors + JSON and rebuilt in plain torch
(never unpickled), every file is checked against the manifest's sha256 on load, and an HMAC-signed bundle is
required when the server holds a key. Real RLlib modules, real files, the real serving loader; no Ray cluster."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from prefmine.integrity import IntegrityConfig, IntegrityError, seal, verify

KEY = b"server-bundle-key-0123456789"


def _module(algorithm: str, obs_size: int, n_actions: int, seed: int = 0):
    import gymnasium as gym
    import torch
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    torch.manual_seed(seed)
    model = asdict(DefaultModelConfig(fcnet_hiddens=[32, 16], fcnet_activation="relu", head_fcnet_hiddens=[]))
    if algorithm == "DQN":
        cls, model = DefaultDQNTorchRLModule, {**model, "dueling": True, "double_q": True, "num_atoms": 1,
                                               "v_min": -10.0, "v_max": 10.0, "epsilon": [(0, 1.0), (10, 0.05)]}
    else:
        cls = DefaultPPOTorchRLModule
    obs = gym.spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float32)
    return RLModuleSpec(module_class=cls, observation_space=obs, action_space=gym.spaces.Discrete(n_actions),
                        model_config=model).build()


class _Evil:
    """Unpickling this creates the marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _policy_bundle(root: Path, algorithm: str = "DQN") -> tuple[Path, object]:
    """A sealed bundle holding a policy exported by the real exporter from a real RLlib module."""
    from prefmine.policy.config import PolicyTrainConfig
    from prefmine.policy.runtime import save_policy
    from prefmine.policy.simulator import ObsSpec, SimulatorConfig, build_simulator_inputs

    rng = np.random.default_rng(0)
    n_items, dim, users = 30, 8, 40
    seqs = [rng.integers(0, n_items, size=rng.integers(2, 6)) for _ in range(users)]
    inputs = build_simulator_inputs(seqs, rng.integers(0, n_items, size=users), n_items,
                                    rng.normal(size=(users, dim)).astype(np.float32),
                                    rng.normal(size=(n_items, dim)).astype(np.float32))
    sim_cfg = SimulatorConfig(n_candidates=10)
    spec = ObsSpec.from_inputs(inputs, sim_cfg)
    module = _module(algorithm, spec.size, sim_cfg.n_candidates)
    bundle = root / "bundle"
    (bundle / "catalog").mkdir(parents=True)
    (bundle / "catalog" / "popularity.npy").write_bytes(b"catalog stand-in")
    save_policy(module, bundle / "policy", inputs, sim_cfg, PolicyTrainConfig(algorithm=algorithm,
                hiddens=(32, 16)), spec, {})
    seal(bundle, {"format": "prefmine-bundle/2", "version": "v1"}, IntegrityConfig())
    return bundle, module


@pytest.mark.parametrize("algorithm", ["DQN", "PPO"])
def test_exported_network_scores_exactly_like_the_rllib_module(tmp_path, algorithm):
    from prefmine.policy.runtime import PolicyRuntime, module_scores

    bundle, module = _policy_bundle(tmp_path, algorithm)
    policy = bundle / "policy"
    assert sorted(p.name for p in policy.iterdir()) == [
        "item_popularity.npy", "item_vectors.npy", "network.json", "policy.safetensors", "policy_config.json",
        "response_model.npz"]
    rt = PolicyRuntime(bundle)
    obs = np.random.default_rng(1).normal(size=(64, rt.spec.size)).astype(np.float32)
    np.testing.assert_allclose(rt.q_values(obs), module_scores(module, algorithm, obs), rtol=0, atol=1e-5)
    np.testing.assert_allclose(rt.q_values(obs[3]), module_scores(module, algorithm, obs[3]), rtol=0, atol=1e-5)
    assert len(set(rt.select(np.ones(rt.spec.dim), np.arange(20), np.linspace(1, 0, 20), 5).tolist())) == 5


def test_a_pickle_in_policy_is_never_unpickled(tmp_path):
    from prefmine.policy.runtime import PolicyRuntime
    from serve.app import _PolicyVersion

    marker = tmp_path / "PWNED"
    # a pickle shipped beside a good policy (listed in the manifest, so integrity passes): loaded, never read
    bundle, _ = _policy_bundle(tmp_path)
    (bundle / "policy" / "extra.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    seal(bundle, cfg=IntegrityConfig())
    PolicyRuntime(bundle)
    assert _PolicyVersion(str(bundle)).kind == "learned" and not marker.exists()
    # an old-format policy (RLModule checkpoint: pickles) and a pickle posing as the safetensors file: refused
    (bundle / "policy" / "policy.safetensors").unlink()
    (bundle / "policy" / "rl_module").mkdir()
    (bundle / "policy" / "rl_module" / "class_and_ctor_args.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    seal(bundle, cfg=IntegrityConfig())
    with pytest.raises(FileNotFoundError, match=r"policy\.safetensors missing"):
        PolicyRuntime(bundle)
    with pytest.raises(FileNotFoundError, match=r"policy\.safetensors missing"):
        _PolicyVersion(str(bundle))  # serving refuses the version instead of falling back to greedy
    (bundle / "policy" / "policy.safetensors").write_bytes(pickle.dumps(_Evil(marker)))
    seal(bundle, cfg=IntegrityConfig())
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        _PolicyVersion(str(bundle))
    assert not marker.exists()
    pickle.loads((bundle / "policy" / "policy.safetensors").read_bytes())  # the payload is live: had any loader
    assert marker.read_text() == "unpickled"  # unpickled it, the marker would have been there


def test_a_bundle_without_policy_is_served_greedy(tmp_path):
    import shutil

    from serve.app import _PolicyVersion

    bundle, _ = _policy_bundle(tmp_path)
    shutil.rmtree(bundle / "policy")
    seal(bundle, cfg=IntegrityConfig())
    v = _PolicyVersion(str(bundle))
    assert v.kind == "greedy" and v.select(None, np.array([4, 7, 9]), np.array([0.1, 0.9, 0.5]), 2).tolist() == [7, 9]


@pytest.mark.parametrize("rel", ["policy/policy.safetensors", "policy/network.json", "policy/item_vectors.npy"])
def test_one_changed_byte_is_refused_on_load_naming_the_file(tmp_path, rel):
    from prefmine.policy.runtime import PolicyRuntime

    bundle, _ = _policy_bundle(tmp_path)
    data = bytearray((bundle / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / rel).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"{rel}: sha256"):
        PolicyRuntime(bundle)
    with pytest.raises(IntegrityError, match=rf"{rel}: sha256"):
        verify(bundle, IntegrityConfig())


def test_a_manifest_version_with_a_path_is_refused_on_load(tmp_path):
    bundle, _ = _policy_bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for version in ("../../etc/cron.d/evil", "/etc/cron.d/evil"):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        with pytest.raises(IntegrityError, match="'version'"):
            verify(bundle, IntegrityConfig())


def test_signed_bundles_verify_and_unsigned_or_wrongly_signed_ones_are_refused(tmp_path, monkeypatch):
    from prefmine import store
    from prefmine.policy.runtime import PolicyRuntime

    bundle, _ = _policy_bundle(tmp_path)
    keyed = IntegrityConfig(key=KEY)
    with pytest.raises(IntegrityError, match="unsigned"):
        verify(bundle, keyed)
    signed = seal(bundle, cfg=keyed)
    assert signed["signature"]["algorithm"] == "hmac-sha256"
    assert verify(bundle, keyed)["version"] == "v1"
    with pytest.raises(IntegrityError, match="does not match this server's key"):
        verify(bundle, IntegrityConfig(key=b"another-key-0123456789"))
    # the signature binds the version and the file list: editing either in the manifest breaks it
    for field, value in (("version", "v2"), ("files", {**signed["files"], "catalog/new.bin": {
            "sha256": "0" * 64, "bytes": 1}})):
        (bundle / "manifest.json").write_text(json.dumps({**signed, field: value}))
        with pytest.raises(IntegrityError, match="does not match this server's key"):
            verify(bundle, keyed)
    # the key configured the way a server holds it (a key file named in the environment): fetch and load
    (bundle / "manifest.json").write_text(json.dumps(signed))
    key_file = tmp_path / "bundle.key"
    key_file.write_bytes(KEY + b"\n")
    monkeypatch.setenv("PREFMINE_BUNDLE_KEY_FILE", str(key_file))
    assert store.fetch(bundle) == bundle.resolve()
    PolicyRuntime(bundle)
    seal(bundle, cfg=IntegrityConfig())  # re-sealed without the key: unsigned
    with pytest.raises(IntegrityError, match="unsigned"):
        store.fetch(bundle)
    with pytest.raises(IntegrityError, match="unsigned"):
        PolicyRuntime(bundle)
    monkeypatch.setenv("PREFMINE_BUNDLE_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(IntegrityError, match="cannot read"):
        IntegrityConfig.from_env()


def test_network_files_that_do_not_form_a_network_are_refused(tmp_path):
    from prefmine.policy.network import NETWORK_FILE, NetworkError, PolicyNetwork

    bundle, _ = _policy_bundle(tmp_path)
    policy = bundle / "policy"
    desc = json.loads((policy / NETWORK_FILE).read_text())
    for bad, match in (({"n_actions": 7}, "n_actions"), ({"algorithm": "A2C"}, "'algorithm'"),
                       ({"trunk": desc["trunk"][1:]}, "trunk layer 0"), ({"head": [["x", "y"]]}, "no tensor 'x'")):
        (policy / NETWORK_FILE).write_text(json.dumps({**desc, **bad}))
        with pytest.raises(NetworkError, match=match):
            PolicyNetwork.load(policy)


def test_serve_refuses_a_tampered_bundle_before_starting_ray(tmp_path, capsys):
    from serve.run import run_serve

    bundle, _ = _policy_bundle(tmp_path)
    for part in ("encoder", "ranker"):
        (bundle / part).mkdir()
        (bundle / part / "weights.bin").write_bytes(b"weights of " + part.encode())
    seal(bundle, cfg=IntegrityConfig())
    (bundle / "ranker" / "weights.bin").write_bytes(b"weights of rankeR")
    assert run_serve(str(bundle), grpc_port=1) == 2
    assert "ranker/weights.bin: sha256" in capsys.readouterr().err
