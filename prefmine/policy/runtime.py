"""Serve-time policy: load the exported RLModule without an Algorithm and build slates from candidates.

`PolicyRuntime(path)` accepts the policy dir (`rl_module/` + `policy_config.json`) or a bundle dir holding
`policy/`. It rebuilds the observation with the simulator's own `build_obs`, so the policy sees at serve time
exactly the features it was trained on. A slate of k is built slot by slot: slot j is the simulator's step j;
the obs lists the top-N remaining candidates by ranker score, and the policy's argmax-Q over the valid ones
fills the slot (already chosen items are removed, padding is masked). Exploration (epsilon) is off by default.
No Ray cluster is needed: RLModule.from_checkpoint + compute_q_values, about a millisecond per slot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prefmine.policy.simulator import ObsSpec, build_obs, top_candidates, unit_rows


class PolicyRuntime:
    def __init__(self, path: str | Path):
        path = Path(path)
        if (path / "policy" / "policy_config.json").is_file():
            path = path / "policy"
        conf_path = path / "policy_config.json"
        if not conf_path.is_file():
            raise FileNotFoundError(f"{path}: no policy_config.json (not a policy dir or bundle with policy/)")
        import torch
        from ray.rllib.core.rl_module.rl_module import RLModule

        torch.set_num_threads(1)
        self.path = path
        self.config = json.loads(conf_path.read_text())
        self.spec = ObsSpec(**self.config["obs_spec"])
        self.n_candidates = self.spec.n_candidates
        self.module = RLModule.from_checkpoint(str((path / "rl_module").resolve()))
        self.module.eval()
        self.item_vectors = np.load(path / "item_vectors.npy")
        self._unit = unit_rows(self.item_vectors)
        self._log_pop = np.log1p(np.load(path / "item_popularity.npy").astype(np.float64))
        self._torch = torch

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q [b, N] for observations [b, obs_size] (or one obs [obs_size] -> [N])."""
        from ray.rllib.core.columns import Columns

        x = np.asarray(obs, dtype=np.float32)
        single = x.ndim == 1
        with self._torch.no_grad():
            out = self.module.compute_q_values({Columns.OBS: self._torch.from_numpy(x[None] if single else x)})
        q = out["qf_preds"].numpy()
        return q[0] if single else q

    def act(self, obs: np.ndarray, valid: np.ndarray | None = None) -> int:
        """Greedy action for one env observation, padded (invalid) slots masked."""
        q = self.q_values(obs)
        if valid is not None:
            q = np.where(valid, q, -np.inf)
        return int(np.argmax(q))

    def select(self, user_state: np.ndarray, candidates: np.ndarray, candidate_scores: np.ndarray, k: int,
               epsilon: float = 0.0, popularity: np.ndarray | None = None,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """An ordered slate of min(k, len(candidates)) distinct item indices chosen from `candidates`.

        user_state [d]: the ranker's state; candidates [M] item indices with ranker scores [M] (M may exceed N:
        each slot looks at the top-N remaining); popularity: per-candidate train counts aligned with
        `candidates` (default: the counts saved with the policy); epsilon: probability of a uniformly random
        valid candidate per slot (online exploration; rng seeds it).
        """
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
        for slot in range(k):
            pos = np.flatnonzero(remaining)
            items, sc, valid = top_candidates(cands[pos], scores[pos], self.n_candidates)
            if epsilon > 0 and rng.random() < epsilon:
                a = int(rng.choice(np.flatnonzero(valid)))
            else:
                obs = build_obs(self.spec, user_state, items, sc, valid, log_pop, self._unit, chosen,
                                min(slot, self.spec.max_steps))
                a = self.act(obs, valid)
            item = int(items[a])
            chosen.append(item)
            remaining[pos[np.flatnonzero(cands[pos] == item)[0]]] = False
        return np.asarray(chosen, dtype=np.int64)
