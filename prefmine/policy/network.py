"""The policy network as data: safetensors weights plus a JSON description, rebuilt in plain torch to serve.

An RLlib RLModule checkpoint is loaded by unpickling (the module's class and constructor arguments), so reading
one runs whatever code the file names. Serving needs only the exported network's forward pass: an MLP trunk
(RLlib's encoder, the activation after every layer) and either one head of action logits (PPO) or DQN's dueling
heads, Q = V + A - mean(A). `export_network` writes the weights that pass needs (`policy.safetensors`, tensors
under RLlib's own parameter names, so they also warm-start training) and `network.json` (algorithm, obs and
action sizes, the layer names in order); `PolicyNetwork.load` reads them back with safetensors (no pickle) and
checks that the shapes chain from the observation to the actions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NET_FORMAT = "prefmine-policy-net/1"
WEIGHTS_FILE = "policy.safetensors"
NETWORK_FILE = "network.json"
ACTIVATIONS = ("relu", "tanh", "linear")

# RLlib's default modules (ray 2.60): DQN encoder.net.mlp.N / af.* / vf.*; PPO with a shared trunk
# encoder.encoder.net.mlp.N (actor_encoder.* when the value function has its own) / pi.*
_PATTERNS = {"trunk": r"encoder\.(?:encoder\.|actor_encoder\.)?net\.mlp\.(\d+)\.(weight|bias)",
             "advantage": r"af\.net\.mlp\.(\d+)\.(weight|bias)", "logits": r"pi\.net\.mlp\.(\d+)\.(weight|bias)",
             "value": r"vf\.net\.mlp\.(\d+)\.(weight|bias)"}


class NetworkError(ValueError):
    """Policy weights or description that do not form the network they claim to."""


def _layers(names: list[str], pattern: str) -> list[list[str]]:
    """[[weight, bias], ...] of the linear layers whose names match `pattern`, in index order."""
    found: dict[int, dict[str, str]] = {}
    for n in names:
        m = re.fullmatch(pattern, n)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = n
    out = []
    for i in sorted(found):
        if set(found[i]) != {"weight", "bias"}:
            raise NetworkError(f"layer {pattern} #{i}: needs a weight and a bias, has {sorted(found[i])}")
        out.append([found[i]["weight"], found[i]["bias"]])
    return out


def export_network(module, algorithm: str, out_dir: str | Path, activation: str = "relu") -> dict:
    """Write `module`'s (an RLlib default DQN or PPO RLModule) forward pass as policy.safetensors + network.json;
    returns the description."""
    import torch
    from safetensors.torch import save_file

    if algorithm not in ("DQN", "PPO"):
        raise NetworkError(f"algorithm {algorithm!r}: DQN or PPO")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()
             if isinstance(v, torch.Tensor)}
    names = sorted(state)
    desc = {"format": NET_FORMAT, "algorithm": algorithm, "activation": activation,
            "trunk": _layers(names, _PATTERNS["trunk"]),
            "head": _layers(names, _PATTERNS["advantage" if algorithm == "DQN" else "logits"]),
            "value": _layers(names, _PATTERNS["value"]) if algorithm == "DQN" else []}
    if not desc["trunk"] or not desc["head"]:
        raise NetworkError(f"{algorithm} module: no MLP trunk or head among its parameters {names[:12]}")
    desc["obs_size"] = int(state[desc["trunk"][0][0]].shape[1])
    desc["n_actions"] = int(state[desc["head"][-1][0]].shape[0])
    used = {n for part in ("trunk", "head", "value") for layer in desc[part] for n in layer}
    out_dir = Path(out_dir)
    save_file({k: state[k] for k in sorted(used)}, str(out_dir / WEIGHTS_FILE), metadata={"format": NET_FORMAT})
    (out_dir / NETWORK_FILE).write_text(json.dumps(desc, indent=2))
    PolicyNetwork.load(out_dir)  # what was written rebuilds (shapes chain), or the export fails here
    return desc


def load_tensors(policy_dir: str | Path) -> dict:
    """The exported weights by RLlib parameter name (torch tensors), read without pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(policy_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the policy was not exported as safetensors (an old bundle holds "
                                "an RLModule checkpoint in rl_module/, which is never unpickled; retrain it)")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise NetworkError(f"{path}: not a readable safetensors file: {e}") from e


@dataclass
class PolicyNetwork:
    """The exported network in plain torch: `scores(obs)` gives DQN's Q-values or PPO's action logits."""

    algorithm: str
    obs_size: int
    n_actions: int
    trunk: object  # torch.nn.Sequential
    head: object
    value: object | None

    @classmethod
    def load(cls, policy_dir: str | Path) -> PolicyNetwork:
        import torch

        policy_dir = Path(policy_dir)
        conf_path = policy_dir / NETWORK_FILE
        if not conf_path.is_file():
            raise FileNotFoundError(f"{conf_path} missing: the policy was not exported as safetensors + JSON")
        try:
            desc = json.loads(conf_path.read_text())
        except ValueError as e:
            raise NetworkError(f"{conf_path}: not JSON: {e}") from e
        if not isinstance(desc, dict) or desc.get("format") != NET_FORMAT:
            raise NetworkError(f"{conf_path}: field 'format' must be {NET_FORMAT!r}")
        algorithm, activation = desc.get("algorithm"), desc.get("activation")
        if algorithm not in ("DQN", "PPO"):
            raise NetworkError(f"{conf_path}: field 'algorithm' is {algorithm!r}; DQN or PPO")
        if activation not in ACTIVATIONS:
            raise NetworkError(f"{conf_path}: field 'activation' is {activation!r}; one of {ACTIVATIONS}")
        for field in ("obs_size", "n_actions"):
            if not isinstance(desc.get(field), int) or desc[field] < 1:
                raise NetworkError(f"{conf_path}: field {field!r} must be a positive int")
        tensors = load_tensors(policy_dir)
        act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "linear": torch.nn.Identity}[activation]

        def build(field: str, n_in: int, final_act: bool) -> tuple[torch.nn.Sequential, int]:
            layers = desc.get(field)
            if not isinstance(layers, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in layers):
                raise NetworkError(f"{conf_path}: field {field!r} must list [weight, bias] name pairs")
            mods: list[torch.nn.Module] = []
            for i, (wn, bn) in enumerate(layers):
                missing = [n for n in (wn, bn) if n not in tensors]
                if missing:
                    raise NetworkError(f"{policy_dir / WEIGHTS_FILE}: no tensor {missing[0]!r} ({field} layer {i})")
                w, b = tensors[wn].float(), tensors[bn].float()
                if w.ndim != 2 or w.shape[1] != n_in or b.shape != (w.shape[0],):
                    raise NetworkError(f"{policy_dir / WEIGHTS_FILE}: {field} layer {i} has weight "
                                       f"{tuple(w.shape)} and bias {tuple(b.shape)}; expected [*, {n_in}] and [*]")
                lin = torch.nn.utils.skip_init(torch.nn.Linear, n_in, w.shape[0])  # no RNG draw
                with torch.no_grad():
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                mods.append(lin)
                if final_act or i < len(layers) - 1:
                    mods.append(act())
                n_in = w.shape[0]
            return torch.nn.Sequential(*mods).eval(), n_in

        trunk, width = build("trunk", desc["obs_size"], True)
        if not desc["trunk"] or not desc["head"]:
            raise NetworkError(f"{conf_path}: 'trunk' and 'head' must each hold at least one layer")
        head, n_out = build("head", width, False)
        if n_out != desc["n_actions"]:
            raise NetworkError(f"{conf_path}: the head gives {n_out} scores, 'n_actions' says {desc['n_actions']}")
        value = None
        if algorithm == "DQN" and desc.get("value"):
            value, v_out = build("value", width, False)
            if v_out != 1:
                raise NetworkError(f"{conf_path}: the value head gives {v_out} outputs, expected 1")
        return cls(algorithm, desc["obs_size"], desc["n_actions"], trunk, head, value)

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """[b, n_actions] scores for [b, obs_size] observations (or [n_actions] for one [obs_size] obs)."""
        import torch

        x = np.asarray(obs, dtype=np.float32)
        single = x.ndim == 1
        x = x[None] if single else x
        if x.ndim != 2 or x.shape[1] != self.obs_size:
            raise ValueError(f"policy: observation shape {tuple(np.shape(obs))}; expected [*, {self.obs_size}]")
        with torch.no_grad():
            h = self.trunk(torch.from_numpy(x))
            q = self.head(h)
            if self.value is not None:  # dueling: advantages centred per row, plus the state value
                q = q - torch.nan_to_num(q, neginf=torch.nan).nanmean(dim=-1, keepdim=True) + self.value(h)
        out = q.numpy()
        return out[0] if single else out
