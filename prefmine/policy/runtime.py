"""The exported policy: `save_policy` writes it after training, `PolicyRuntime` loads it without RLlib and builds
slates from candidates.

`PolicyRuntime(path)` accepts the policy dir (`policy_config.json`, the network as `policy.safetensors` +
`network.json`, see prefmine.policy.network) or a bundle dir holding `policy/`. Nothing in it is unpickled:
JSON, safetensors and .npy (read with allow_pickle=False). Inside a bundle the policy's files are first checked
against the manifest's digests (prefmine.integrity.verify); a standalone policy dir (a training run's output)
has no manifest to check against. It rebuilds the observation with the simulator's own `build_obs`, so the policy sees at serve time
exactly the features it was trained on. A slate of k is built slot by slot: slot j is the simulator's step j;
the obs lists the top-N remaining candidates by ranker score, and the policy's best-scored valid candidate
fills the slot (already chosen items are removed, padding is masked). The score of a candidate is its Q-value
for DQN and its action logit for PPO (`policy_config.json` says which algorithm trained it); greedy argmax
over either is the deterministic policy. Exploration is off by default: `epsilon` (constructor, or per call)
replaces a slot's choice with a uniformly random valid candidate with that probability, for online
exploration; `select(..., return_propensities=True)` also returns each slot's probability of the item it chose
under that epsilon-greedy rule, which is what an off-policy estimate of a later policy needs logged.
No Ray is needed: one plain torch forward pass per slot.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prefmine.policy.simulator import (
    ObsSpec,
    SimulatorConfig,
    SimulatorInputs,
    build_obs,
    obs_layout,
    top_candidates,
    unit_rows,
)


def module_scores(module, algorithm: str, obs: np.ndarray) -> np.ndarray:
    """Action scores of an RLModule (DQN: Q-values, PPO: logits) for [b, obs_size] or [obs_size] observations."""
    import torch
    from ray.rllib.core.columns import Columns

    x = np.asarray(obs, dtype=np.float32)
    single = x.ndim == 1
    batch = {Columns.OBS: torch.from_numpy(x[None] if single else x)}
    with torch.no_grad():
        if algorithm == "DQN":
            q = module.compute_q_values(batch)["qf_preds"].numpy()
        else:
            q = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].numpy()
    return q[0] if single else q


def masked_argmax(scores: np.ndarray, valid: np.ndarray | None = None) -> int:
    if valid is not None:
        scores = np.where(valid, scores, -np.inf)
    return int(np.argmax(scores))


class ModulePolicy:
    """A live RLModule (e.g. `algo.get_module()` during training) with PolicyRuntime's act(): for evaluating
    the policy between training iterations without exporting it."""

    def __init__(self, module, algorithm: str):
        self.module, self.algorithm = module, algorithm

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return module_scores(self.module, self.algorithm, obs)

    def act(self, obs: np.ndarray, valid: np.ndarray | None = None) -> int:
        return masked_argmax(self.q_values(obs), valid)


class PolicyRuntime:
    def __init__(self, path: str | Path, epsilon: float | None = None, verify_bundle: bool = True):
        from prefmine.bundle import MANIFEST
        from prefmine.integrity import verify
        from prefmine.policy.network import PolicyNetwork

        path = Path(path)
        if (path / "policy" / "policy_config.json").is_file():
            path = path / "policy"
        conf_path = path / "policy_config.json"
        if not conf_path.is_file():
            raise FileNotFoundError(f"{path}: no policy_config.json (not a policy dir or bundle with policy/)")
        # a bundle's policy: every file as the manifest lists it. verify_bundle=False only for the training run
        # that has just written this policy into a bundle it seals afterwards (cluster.pipeline's staging dir)
        if verify_bundle and (path.parent / MANIFEST).is_file():
            verify(path.parent, only=path.name)
        import torch

        torch.set_num_threads(1)
        self.path = path
        self.config = json.loads(conf_path.read_text())
        self.spec = ObsSpec(**self.config["obs_spec"])
        self.algorithm = self.config.get("algorithm", "DQN")
        if epsilon is None:
            epsilon = float(self.config.get("serving", {}).get("epsilon", 0.0))
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"PolicyRuntime: epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)
        self.n_candidates = self.spec.n_candidates
        self.network = PolicyNetwork.load(path)
        if self.network.algorithm != self.algorithm or self.network.obs_size != self.spec.size:
            raise ValueError(f"{path}: network.json ({self.network.algorithm}, obs {self.network.obs_size}) does "
                             f"not match policy_config.json ({self.algorithm}, obs {self.spec.size})")
        if self.network.n_actions != self.n_candidates:
            raise ValueError(f"{path}: the network scores {self.network.n_actions} actions, the obs spec has "
                             f"{self.n_candidates} candidates")
        self.item_vectors = np.load(path / "item_vectors.npy", allow_pickle=False)
        self._unit = unit_rows(self.item_vectors)
        self._log_pop = np.log1p(np.load(path / "item_popularity.npy", allow_pickle=False).astype(np.float64))

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Action scores [b, N] for observations [b, obs_size] (or one obs [obs_size] -> [N]): DQN's Q-values,
        PPO's action logits. Higher is better in both; argmax is the greedy action."""
        return self.network.scores(obs)

    scores = q_values

    def act(self, obs: np.ndarray, valid: np.ndarray | None = None) -> int:
        """Greedy action for one env observation, padded (invalid) slots masked."""
        return masked_argmax(self.q_values(obs), valid)

    def select(self, user_state: np.ndarray, candidates: np.ndarray, candidate_scores: np.ndarray, k: int,
               epsilon: float | None = None, popularity: np.ndarray | None = None,
               rng: np.random.Generator | None = None, return_propensities: bool = False):
        """An ordered slate of min(k, len(candidates)) distinct item indices chosen from `candidates`.

        user_state [d]: the ranker's state; candidates [M] item indices with ranker scores [M] (M may exceed N:
        each slot looks at the top-N remaining); popularity: per-candidate train counts aligned with
        `candidates` (default: the counts saved with the policy); epsilon: probability of a uniformly random
        valid candidate per slot (online exploration; rng seeds it; None: the runtime's `epsilon`, 0 unless
        configured). return_propensities: also return [k] probabilities of each slot's choice given the slots
        before it.
        """
        epsilon = self.epsilon if epsilon is None else float(epsilon)
        cands = np.asarray(candidates, dtype=np.int64)
        scores = np.asarray(candidate_scores, dtype=np.float64)
        if cands.shape != scores.shape:
            raise ValueError(f"select: candidates {cands.shape} and candidate_scores {scores.shape} differ")
        if len(user_state) != self.spec.dim:
            raise ValueError(f"select: user_state has dim {len(user_state)}, policy expects {self.spec.dim}")
        log_pop = self._log_pop
        if popularity is not None:
            log_pop = self._log_pop.copy()
            log_pop[cands] = np.log1p(np.asarray(popularity, dtype=np.float64))
        first = np.sort(np.unique(cands, return_index=True)[1])  # drop duplicate candidates
        cands, scores = cands[first], scores[first]
        if epsilon > 0 and rng is None:
            rng = np.random.default_rng()
        k = min(int(k), len(cands))
        remaining = np.ones(len(cands), dtype=bool)
        chosen: list[int] = []
        props: list[float] = []
        for slot in range(k):
            pos = np.flatnonzero(remaining)
            items, sc, valid = top_candidates(cands[pos], scores[pos], self.n_candidates)
            n_valid = int(valid.sum())
            explore = epsilon > 0 and rng.random() < epsilon
            greedy_a = None
            if not explore or return_propensities:
                obs = build_obs(self.spec, user_state, items, sc, valid, log_pop, self._unit, chosen,
                                min(slot, self.spec.max_steps))
                greedy_a = self.act(obs, valid)
            a = int(rng.choice(np.flatnonzero(valid))) if explore else greedy_a
            props.append(epsilon / n_valid + (1.0 - epsilon) * (a == greedy_a))
            item = int(items[a])
            chosen.append(item)
            remaining[pos[np.flatnonzero(cands[pos] == item)[0]]] = False
        slate = np.asarray(chosen, dtype=np.int64)
        return (slate, np.asarray(props)) if return_propensities else slate


def save_policy(module, out_dir: Path, inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg,
                spec: ObsSpec, metrics: dict) -> Path:
    """Write the policy dir that `PolicyRuntime` loads, atomically (temp dir, then rename), replacing an older one.

    `module` is the trained RLModule (only its weights are read, see prefmine.policy.network.export_network);
    `cfg` the PolicyTrainConfig it was trained with. The dir holds:

        policy.safetensors    the network's weights
        network.json          its architecture: algorithm, obs and action sizes, layers in order
        policy_config.json    simulator config, obs spec and layout, N, training metrics
        item_vectors.npy      the ranker item vectors the policy was trained against (obs feature)
        item_popularity.npy   train counts (obs feature)
        response_model.npz    the simulator's user response model (the update job refits from it)
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    from prefmine.policy.network import PER_CANDIDATE, export_network, export_per_candidate
    from prefmine.policy.response import save_response

    tmp = Path(tempfile.mkdtemp(prefix=".policy-", dir=out_dir.parent))
    try:
        if cfg.q_network == PER_CANDIDATE:
            export_per_candidate(module, tmp, {"dim": spec.dim, "n_candidates": spec.n_candidates,
                                               "state_hidden": cfg.state_hidden, "hiddens": list(cfg.hiddens)})
        else:
            export_network(module, cfg.algorithm, tmp)
        np.save(tmp / "item_vectors.npy", np.asarray(inputs.item_vectors, dtype=np.float32))
        np.save(tmp / "item_popularity.npy", np.asarray(inputs.item_popularity, dtype=np.float64))
        save_response(tmp / "response_model.npz", inputs.response)
        conf = {"format": "prefmine-policy/2", "algorithm": cfg.algorithm, "n_candidates": sim_cfg.n_candidates,
                "simulator": asdict(sim_cfg), "train": asdict(cfg), "obs_spec": spec.to_dict(),
                "obs_layout": obs_layout(spec), "obs_size": spec.size, "n_items": int(len(inputs.item_vectors)),
                "serving": {"epsilon": 0.0}, "metrics": metrics}
        (tmp / "policy_config.json").write_text(json.dumps(conf, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
