"""A user simulator (gymnasium.Env) for training the recommendation policy with RLlib.

One episode is one browsing session of one logged user u, one item per step: the session is a sequence of
slates (pages) of k = `slate_size` items filled slot by slot (a sequential per-slot choice: step t shows display
position pos = t mod k; slate_size 0: one page as long as the session). Each step the ranker proposes its top-N
unseen candidates for the current user state s_t (score = s_t . v_i, blended with the co-occurrence and text
terms of the bundle's `ranker/blend.py` when the inputs carry that blend, exactly as serving scores them, so the
policy is trained on the scores and candidates it is served); the policy picks one of them (Discrete(N)); the
user responds.

The response model (fitted on the logged train interactions, held out from the ranker; `response.py`):

    attract(c | H)  = sigmoid(w . standardise[mean_h cos(c, h), max_h cos(c, h), log(1 + pop_c)] + b)
                      cos = item-item co-occurrence cosine over the train user-item matrix, H = u's history
    fatigue(c)      = 1 - fatigue * clip(max_{j in last fatigue_window shown} cos(c, j), 0, 1)
    P(click)        = attract(c | H) * fatigue(c) * 1 / log2(pos + 2)              (position bias)
    P(buy | click)  = smoothed share of the item's train ratings >= 4
    reward          = click + purchase_value * buy    (paid as its expectation by default: same objective)
    P(leave)        = leave_prob + leave_prob_skip * [no click]   after every step (interest runs out)
    on a click      : H += c;  s_t+1 = (1 - state_step) s_t + state_step |s_t| v_c / |v_c|
    truncation      : max_steps items

A shown item is never proposed again in the session; items of u's history are never proposed. The check of the
model on logged data is `response.auc`: the real held-out next item of each user against random items (the
benchmark reports it; the test asserts > 0.6).

Why: greedy "show the ranker's top item" is the baseline. A policy can beat it only by using what the ranker
ignores: popularity, the diversity of what was already shown, where the session stands. So the observation
carries those response-independent features and nothing from the response model itself.

Everything the env needs is in `SimulatorInputs` (plain numpy, pickles into RLlib env runners). The
observation is built by `build_obs`, which `PolicyRuntime` imports so serving sees the same features.

Observation layout (float32, length d + 3N + 1; see `obs_layout`):
    [ state / state_scale                       (d)
      standardised ranker scores of candidates  (N)   ranker order: index 0 = ranker's top item
      standardised log popularity               (N)
      max cosine (ranker vectors) to the items already shown this session  (N)
      step / max_steps                          (1) ]
Padded candidate slots (when fewer than N unseen items remain) get score PAD_SCORE and are masked by callers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np

from prefmine.policy.response import ResponseModel, position_bias

PAD_SCORE = -5.0


@dataclass(frozen=True)
class SimulatorConfig:
    """Simulator settings (presets in prefmine.train_config)."""

    n_candidates: int = 10  # N: actions per step = the ranker's top-N unseen items
    max_steps: int = 10  # session length cap (truncation)
    slate_size: int = 0  # k: items per slate (page); position bias restarts on each page; 0: one page
    purchase_value: float = 1.0  # reward of a purchase on top of the click's 1.0
    leave_prob: float = 0.05  # leave probability after a click
    leave_prob_skip: float = 0.2  # extra leave probability after a skip
    fatigue: float = 0.6  # attraction *= 1 - fatigue * max co-occurrence cosine to recently shown items
    fatigue_window: int = 5  # how many recently shown items tire the user
    state_step: float = 0.3  # a click moves the state this fraction toward the clicked item
    exclude_history: bool = True  # never propose items already in the user's history
    expected_reward: bool = True  # reward = E[click + purchase] (same mean, far less variance); False: sampled


@dataclass
class SimulatorInputs:
    """What the simulator is built from; plain numpy so it pickles into env runners.

    user_states: [U, d] the ranker's sequence representation of each user; item_vectors: [I, d] the ranker's
    item vectors (ranker score = state @ item_vectors.T); item_popularity: [I] train counts;
    user_histories: U int arrays of item indices; response: the fitted, ranker-independent response model;
    blend: the ranker's `ScoreBlend` (None: raw ranker scores), applied to every candidate scoring as serving
    applies it (`candidate_scores`).
    """

    user_states: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray
    user_histories: list[np.ndarray]
    response: ResponseModel
    blend: object | None = None

    def candidate_scores(self, states: np.ndarray, histories) -> np.ndarray:
        """Scores of every item [len(states), I] for users in `states` with `histories`: the served scores."""
        scores = np.asarray(states, dtype=np.float64) @ self.item_vectors.astype(np.float64).T
        if self.blend is None:
            return scores
        return self.blend.full(scores, [np.asarray(h, dtype=np.int64) for h in histories])

    def __post_init__(self):
        u, d = self.user_states.shape
        i, d2 = self.item_vectors.shape
        if d != d2:
            raise ValueError(f"SimulatorInputs: user_states dim {d} != item_vectors dim {d2}")
        if len(self.item_popularity) != i or self.response.n_items != i:
            raise ValueError(f"SimulatorInputs: item_popularity ({len(self.item_popularity)}) and response model "
                             f"({self.response.n_items}) must cover the {i} items")
        if len(self.user_histories) != u:
            raise ValueError(f"SimulatorInputs: {len(self.user_histories)} user_histories for {u} user_states")


@dataclass(frozen=True)
class ObsSpec:
    """Observation size and the normalisation constants (computed once from the inputs, saved with the policy)."""

    dim: int
    n_candidates: int
    max_steps: int
    state_scale: float
    score_mean: float
    score_std: float
    logpop_mean: float
    logpop_std: float

    @property
    def size(self) -> int:
        return self.dim + 3 * self.n_candidates + 1

    @classmethod
    def from_inputs(cls, inputs: SimulatorInputs, cfg: SimulatorConfig) -> ObsSpec:
        states = inputs.user_states.astype(np.float64)
        rows = np.arange(len(states))
        if len(states) > 2000:  # a fixed sample is enough for the normalisation constants
            rows = np.random.default_rng(0).choice(len(states), 2000, replace=False)
        states = states[rows]
        scores = inputs.candidate_scores(states, [inputs.user_histories[i] for i in rows])
        top = -np.sort(-scores, axis=1)[:, : cfg.n_candidates]  # the scores the policy actually sees
        lp = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))
        return cls(dim=inputs.user_states.shape[1], n_candidates=cfg.n_candidates, max_steps=cfg.max_steps,
                   state_scale=float(max(np.sqrt((states**2).mean()), 1e-8)),
                   score_mean=float(top.mean()), score_std=float(max(top.std(), 1e-8)),
                   logpop_mean=float(lp.mean()), logpop_std=float(max(lp.std(), 1e-8)))

    def to_dict(self) -> dict:
        return asdict(self)


def obs_layout(spec: ObsSpec) -> dict:
    """Slices of the observation vector, for policy_config.json."""
    d, n = spec.dim, spec.n_candidates
    return {"state": [0, d], "scores": [d, d + n], "log_popularity": [d + n, d + 2 * n],
            "sim_to_shown": [d + 2 * n, d + 3 * n], "step_fraction": [d + 3 * n, d + 3 * n + 1]}


def top_candidates(pool: np.ndarray, pool_scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n best-scored items of `pool` (stable: ties keep pool order), padded to n.

    Returns (items [n] with -1 padding, scores [n], valid [n] bool).
    """
    neg = -np.asarray(pool_scores, dtype=np.float64)
    if len(neg) > 4 * n:  # partial selection first: O(M) instead of O(M log M) on big catalogues
        part = np.sort(np.argpartition(neg, n - 1)[:n])
        order = part[np.argsort(neg[part], kind="stable")]
    else:
        order = np.argsort(neg, kind="stable")[:n]
    items = np.full(n, -1, dtype=np.int64)
    scores = np.zeros(n, dtype=np.float64)
    valid = np.zeros(n, dtype=bool)
    items[: len(order)] = np.asarray(pool)[order]
    scores[: len(order)] = np.asarray(pool_scores)[order]
    valid[: len(order)] = True
    return items, scores, valid


def build_obs(spec: ObsSpec, state: np.ndarray, items: np.ndarray, scores: np.ndarray, valid: np.ndarray,
              log_pop: np.ndarray, unit_vectors: np.ndarray, shown: list[int] | np.ndarray, step: int) -> np.ndarray:
    """The observation for one decision (shared by the env and PolicyRuntime).

    items/scores/valid: the N candidates from `top_candidates`; log_pop: [I] log(1 + popularity);
    unit_vectors: [I, d] L2-normalised ranker item vectors; shown: items shown so far this session/slate.
    """
    n = spec.n_candidates
    obs = np.empty(spec.size, dtype=np.float32)
    d = spec.dim
    obs[:d] = np.asarray(state, dtype=np.float64) / spec.state_scale
    safe = np.where(valid, items, 0)
    obs[d: d + n] = np.where(valid, (scores - spec.score_mean) / spec.score_std, PAD_SCORE)
    obs[d + n: d + 2 * n] = np.where(valid, (log_pop[safe] - spec.logpop_mean) / spec.logpop_std, PAD_SCORE)
    if len(shown):
        sim = (unit_vectors[safe] @ unit_vectors[np.asarray(shown, dtype=np.int64)].T).max(axis=1)
    else:
        sim = np.zeros(n)
    obs[d + 2 * n: d + 3 * n] = np.where(valid, sim, 1.0)
    obs[d + 3 * n] = step / spec.max_steps
    return obs


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


class RecSimEnv(gym.Env):
    """Session simulator; env_config = {"inputs": SimulatorInputs, "config": SimulatorConfig | dict}.

    reward per step = click (1.0) + purchase_value if the click converts, in [0, 1 + purchase_value]; with
    `expected_reward` (default) its expectation p_click * (1 + p_buy * purchase_value) is paid instead, while the
    click itself is still sampled and drives the state, history and leaving (lower-variance, same objective).
    info: item shown, click, purchase, click probability, user index.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_config: dict | None = None):
        env_config = dict(env_config or {})
        self.inputs: SimulatorInputs = env_config["inputs"]
        cfg = env_config.get("config", SimulatorConfig())
        self.cfg = SimulatorConfig(**cfg) if isinstance(cfg, dict) else cfg
        self.spec_obs = env_config.get("obs_spec") or ObsSpec.from_inputs(self.inputs, self.cfg)
        self._item_vecs = self.inputs.item_vectors.astype(np.float32)
        self._unit = unit_rows(self._item_vecs)
        self._log_pop = np.log1p(np.asarray(self.inputs.item_popularity, dtype=np.float64))
        emb = self.inputs.response.item_emb
        self._cooc_unit = unit_rows(emb)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.spec_obs.size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.cfg.n_candidates)
        self.reward_range = (0.0, 1.0 + self.cfg.purchase_value)

    # --- episode state -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        n_users = len(self.inputs.user_histories)
        self.user = int(options["user"]) if options and "user" in options else int(rng.integers(n_users))
        self.state = self.inputs.user_states[self.user].astype(np.float64).copy()
        self.history = [int(i) for i in self.inputs.user_histories[self.user]]
        self.shown: list[int] = []
        self.t = 0
        self._blocked = np.zeros(len(self._item_vecs), dtype=bool)
        if self.cfg.exclude_history:
            self._blocked[np.asarray(self.history, dtype=np.int64)] = True
        self._candidates()
        return self._obs(), {"user": self.user}

    def _candidates(self):
        if self.inputs.blend is None:
            scores = self._item_vecs @ self.state.astype(np.float32)
        else:
            scores = self.inputs.candidate_scores(self.state[None], [self.history])[0]
        pool = np.flatnonzero(~self._blocked)
        self.cand, self.cand_scores, self.valid = top_candidates(pool, scores[pool], self.cfg.n_candidates)

    def _obs(self) -> np.ndarray:
        return build_obs(self.spec_obs, self.state, self.cand, self.cand_scores, self.valid, self._log_pop,
                         self._unit, self.shown, self.t)

    @property
    def position(self) -> int:
        """Display position of the current step within its slate."""
        return self.t % self.cfg.slate_size if self.cfg.slate_size > 0 else self.t

    def step(self, action):
        cfg, rng = self.cfg, self.np_random
        a = int(action)
        reward, click, buy, p = 0.0, False, False, 0.0
        item = int(self.cand[a]) if 0 <= a < cfg.n_candidates and self.valid[a] else -1
        if item >= 0:  # an invalid (padded) slot shows nothing: the step is wasted
            p = float(self.inputs.response.attraction(np.asarray(self.history), [item])[0])
            recent = self.shown[-cfg.fatigue_window:]
            if recent:
                dup = float(np.max(self._cooc_unit[recent] @ self._cooc_unit[item]))
                p *= 1.0 - cfg.fatigue * min(max(dup, 0.0), 1.0)
            p *= float(position_bias(self.position))
            click = bool(rng.random() < p)
            p_buy = float(self.inputs.response.buy_prob[item])
            if cfg.expected_reward:
                reward = p * (1.0 + p_buy * cfg.purchase_value)
            if click:
                buy = bool(rng.random() < p_buy)
                if not cfg.expected_reward:
                    reward = 1.0 + (cfg.purchase_value if buy else 0.0)
                self.history.append(item)
                v = self._item_vecs[item].astype(np.float64)
                norm = np.linalg.norm(self.state)
                v = v * (norm / max(np.linalg.norm(v), 1e-8)) if norm > 0 else v
                self.state = (1 - cfg.state_step) * self.state + cfg.state_step * v
            self.shown.append(item)
            self._blocked[item] = True
        self.t += 1
        leave = cfg.leave_prob + (0.0 if click else cfg.leave_prob_skip)
        terminated = bool(rng.random() < leave)
        truncated = (not terminated) and self.t >= cfg.max_steps
        self._candidates()
        info = {"item": item, "click": click, "purchase": buy, "p_click": p, "user": self.user}
        return self._obs(), reward, terminated, truncated, info


def build_simulator_inputs(train_seqs: list[np.ndarray], next_items: np.ndarray, n_items: int,
                           user_states: np.ndarray, item_vectors: np.ndarray,
                           rated_items: np.ndarray | None = None, ratings: np.ndarray | None = None,
                           min_history: int = 1, seed: int = 0, blend=None, **fit_kwargs) -> SimulatorInputs:
    """Fit the response model on logged data and assemble SimulatorInputs.

    train_seqs: each user's train item indices (the ranker saw these); next_items: each user's validation item
    (-1: none); user_states [U, d] / item_vectors [I, d]: from the ranker (e.g. RankerRuntime.user_states(train_seqs)
    and .item_vectors). Users with fewer than `min_history` train items are left out of the simulator. blend: the
    ranker's ScoreBlend (RankerRuntime.blend), so candidates are scored as serving scores them.
    """
    from prefmine.policy.response import fit_response_model, item_counts

    response = fit_response_model(train_seqs, np.asarray(next_items), n_items, rated_items=rated_items,
                                  ratings=ratings, seed=seed, **fit_kwargs)
    keep = np.array([len(s) >= min_history for s in train_seqs], dtype=bool)
    if not keep.any():
        raise ValueError(f"build_simulator_inputs: no user has >= {min_history} train items")
    return SimulatorInputs(
        user_states=np.asarray(user_states, dtype=np.float32)[keep],
        item_vectors=np.asarray(item_vectors, dtype=np.float32),
        item_popularity=item_counts(train_seqs, n_items),
        user_histories=[np.asarray(s, dtype=np.int64) for s, k in zip(train_seqs, keep) if k],
        response=response,
        blend=blend,
    )
