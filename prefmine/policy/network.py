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



def observation_batch(obs: np.ndarray, obs_size: int) -> tuple[np.ndarray, bool]:
    """([b, obs_size] float32 observations, whether one unbatched [obs_size] observation was given); a ValueError
    naming the shape for anything else."""
    x = np.asarray(obs, dtype=np.float32)
    single = x.ndim == 1
    x = x[None] if single else x
    if x.ndim != 2 or x.shape[1] != obs_size:
        raise ValueError(f"policy: observation shape {tuple(np.shape(obs))}; expected [*, {obs_size}]")
    return x, single

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
    def load(cls, policy_dir: str | Path) -> PolicyNetwork | PerCandidateNetwork:
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
        kind = desc.get("network", "flat")
        if kind not in NETWORKS:
            raise NetworkError(f"{conf_path}: field 'network' is {kind!r}; one of {NETWORKS}")
        if kind == PER_CANDIDATE:
            return PerCandidateNetwork.from_desc(policy_dir, desc)
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

        x, single = observation_batch(obs, self.obs_size)
        with torch.no_grad():
            h = self.trunk(torch.from_numpy(x))
            q = self.head(h)
            if self.value is not None:  # dueling: advantages centred per row, plus the state value
                q = q - torch.nan_to_num(q, neginf=torch.nan).nanmean(dim=-1, keepdim=True) + self.value(h)
        out = q.numpy()
        return out[0] if single else out


# --- the per-candidate Q-network ----------------------------------------------------------------------------------
# One small MLP with shared weights scores every candidate from [a summary of the user state, that candidate's
# features (ranker score, log popularity, similarity to the items shown), the step]; the Q-values are one score
# per candidate (dueling: plus a state value from the candidates' mean embedding, minus the mean advantage), so
# permuting the candidates permutes the Q-values ("Q per item", as in SlateQ). The flat MLP instead has to learn
# a separate output per candidate slot. The same torch modules are trained inside RLlib (cluster/policy_module.py)
# and rebuilt here from network.json + safetensors to serve.

PER_CANDIDATE = "per_candidate"
NETWORKS = ("flat", PER_CANDIDATE)
CANDIDATE_FEATURES = 3  # per candidate in the obs (simulator.obs_layout): score, log popularity, sim to shown


def _torch():
    import torch

    return torch


class CandidateEncoder(_torch().nn.Module):
    """obs [B, d + 3N + 1] -> per-candidate embeddings [B, N, H] (H = hiddens[-1])."""

    def __init__(self, dim: int, n_candidates: int, state_hidden: int, hiddens: tuple | list):
        torch = _torch()
        super().__init__()
        self.dim, self.n = int(dim), int(n_candidates)
        self.state = torch.nn.Sequential(torch.nn.Linear(self.dim, int(state_hidden)), torch.nn.ReLU())
        layers: list = []
        n_in = int(state_hidden) + CANDIDATE_FEATURES + 1
        for h in hiddens:
            layers += [torch.nn.Linear(n_in, int(h)), torch.nn.ReLU()]
            n_in = int(h)
        self.item = torch.nn.Sequential(*layers)
        self.out_dim = n_in

    def forward(self, obs):
        d, n = self.dim, self.n
        b = obs.shape[0]
        u = self.state(obs[:, :d])  # [B, S]
        feats = obs[:, d: d + CANDIDATE_FEATURES * n].reshape(b, CANDIDATE_FEATURES, n).transpose(1, 2)  # [B, N, 3]
        step = obs[:, d + CANDIDATE_FEATURES * n: d + CANDIDATE_FEATURES * n + 1]  # [B, 1]
        x = _torch().cat([u[:, None, :].expand(b, n, u.shape[1]), feats, step[:, None, :].expand(b, n, 1)], dim=-1)
        return self.item(x)


class CandidateHead(_torch().nn.Module):
    """Per-candidate embeddings [B, N, H] -> advantages [B, N] (the same linear map for every candidate)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = _torch().nn.Linear(int(width), 1)

    def forward(self, h):
        return self.linear(h).squeeze(-1)


class PooledValue(_torch().nn.Module):
    """Per-candidate embeddings [B, N, H] -> the state value [B, 1] from their mean (order-free)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = _torch().nn.Linear(int(width), 1)

    def forward(self, h):
        return self.linear(h.mean(dim=1))


def per_candidate_modules(dim: int, n_candidates: int, state_hidden: int, hiddens) -> tuple:
    """(encoder, advantage head, value head): the per-candidate network's parts, untrained."""
    enc = CandidateEncoder(dim, n_candidates, state_hidden, hiddens)
    return enc, CandidateHead(enc.out_dim), PooledValue(enc.out_dim)


def per_candidate_q(encoder, head, value, obs):
    """Dueling Q-values [B, N]: V + A - mean(A), as RLlib's DQN combines them."""
    h = encoder(obs)
    a = head(h)
    return a - a.mean(dim=-1, keepdim=True) + value(h)


# state_dict prefixes of the parts inside the RLModule (cluster/policy_module.py); RLlib's target copies are left out
PER_CANDIDATE_PARTS = {"encoder": "encoder.net.", "head": "af.", "value": "vf."}


def export_per_candidate(module, out_dir: str | Path, arch: dict) -> dict:
    """Write a per-candidate DQN RLModule as policy.safetensors (tensors under the module's own names, so they
    also warm-start training) + network.json (`arch`: dim, n_candidates, state_hidden, hiddens)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()
             if isinstance(v, torch.Tensor) and k.startswith(tuple(PER_CANDIDATE_PARTS.values()))}
    desc = {"format": NET_FORMAT, "network": PER_CANDIDATE, "algorithm": "DQN", "activation": "relu",
            "dim": int(arch["dim"]), "n_candidates": int(arch["n_candidates"]),
            "state_hidden": int(arch["state_hidden"]), "hiddens": [int(h) for h in arch["hiddens"]],
            "obs_size": int(arch["dim"]) + CANDIDATE_FEATURES * int(arch["n_candidates"]) + 1,
            "n_actions": int(arch["n_candidates"])}
    out_dir = Path(out_dir)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": NET_FORMAT})
    (out_dir / NETWORK_FILE).write_text(json.dumps(desc, indent=2))
    PolicyNetwork.load(out_dir)  # what was written rebuilds, or the export fails here
    return desc


@dataclass
class PerCandidateNetwork:
    """The exported per-candidate network in plain torch, with PolicyNetwork's interface."""

    algorithm: str
    obs_size: int
    n_actions: int
    encoder: object
    head: object
    value: object

    @classmethod
    def from_desc(cls, policy_dir: Path, desc: dict) -> PerCandidateNetwork:
        import torch

        conf_path = policy_dir / NETWORK_FILE
        for field in ("dim", "n_candidates", "state_hidden", "obs_size", "n_actions"):
            if not isinstance(desc.get(field), int) or desc[field] < 1:
                raise NetworkError(f"{conf_path}: field {field!r} must be a positive int")
        hiddens = desc.get("hiddens")
        if not isinstance(hiddens, list) or not hiddens or not all(isinstance(h, int) and h > 0 for h in hiddens):
            raise NetworkError(f"{conf_path}: field 'hiddens' must list positive ints")
        if desc.get("algorithm") != "DQN":
            raise NetworkError(f"{conf_path}: a per-candidate network is a DQN; 'algorithm' is {desc.get('algorithm')!r}")
        if desc["obs_size"] != desc["dim"] + CANDIDATE_FEATURES * desc["n_candidates"] + 1 \
                or desc["n_actions"] != desc["n_candidates"]:
            raise NetworkError(f"{conf_path}: obs_size/n_actions do not follow from dim and n_candidates")
        with torch.random.fork_rng():  # the random init is overwritten below; the caller's RNG stays untouched
            enc, head, value = per_candidate_modules(desc["dim"], desc["n_candidates"], desc["state_hidden"], hiddens)
        tensors = load_tensors(policy_dir)
        for part, mod in (("encoder", enc), ("head", head), ("value", value)):
            prefix = PER_CANDIDATE_PARTS[part]
            own = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
            try:
                mod.load_state_dict(own, strict=True)
            except RuntimeError as e:
                raise NetworkError(f"{policy_dir / WEIGHTS_FILE}: the {part} tensors do not fit network.json: "
                                   f"{e}") from e
            mod.eval()
        return cls("DQN", desc["obs_size"], desc["n_actions"], enc, head, value)

    def scores(self, obs: np.ndarray) -> np.ndarray:
        import torch

        x, single = observation_batch(obs, self.obs_size)
        with torch.no_grad():
            q = per_candidate_q(self.encoder, self.head, self.value, torch.from_numpy(x))
        out = q.numpy()
        return out[0] if single else out
