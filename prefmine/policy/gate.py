"""The policy gate: serve the learned policy only where it beats the best heuristic, else that heuristic.

Heuristics are the orders a shop gets for free: the ranker's own order (``greedy``), ``popularity``, and
``mix``, a tuned blend ``alpha * z(ranker score) + (1 - alpha) * z(log(1 + popularity))`` over the candidates
(z: standardised over the candidates of the slot). `decide` compares the simulator's session returns: the
learned policy wins only when its 95% interval lies wholly above the best heuristic's (lower bound above the
heuristic's upper bound); a tie or an overlap serves the heuristic, since a policy that cannot be told apart
from a free rule is not worth its risk. The decision, with every figure it was made on, is written into the
bundle (`policy/gate.json`), served by the ranker deployment and shown in ModelInfo.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HEURISTICS = ("greedy", "popularity", "mix")
GATE_FILE = "gate.json"


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def heuristic_scores(name: str, ranker_scores: np.ndarray, log_popularity: np.ndarray,
                     alpha: float = 1.0) -> np.ndarray:
    """Per-candidate scores of heuristic `name` (higher first); candidates aligned across both inputs."""
    if name == "greedy":
        return np.asarray(ranker_scores, dtype=np.float64)
    if name == "popularity":
        return np.asarray(log_popularity, dtype=np.float64)
    if name == "mix":
        return alpha * _z(ranker_scores) + (1.0 - alpha) * _z(log_popularity)
    raise ValueError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS)}")


def heuristic_slate(name: str, candidates: np.ndarray, ranker_scores: np.ndarray, log_popularity: np.ndarray,
                    k: int, alpha: float = 1.0) -> np.ndarray:
    """The top min(k, M) distinct candidates by heuristic `name`; ties keep the ranker's order (stable sort)."""
    cands = np.asarray(candidates, dtype=np.int64)
    first = np.sort(np.unique(cands, return_index=True)[1])
    cands = cands[first]
    s = heuristic_scores(name, np.asarray(ranker_scores)[first], np.asarray(log_popularity)[first], alpha)
    order = np.argsort(-s, kind="stable")
    return cands[order[:min(int(k), len(cands))]]


def mix_chooser(log_pop: np.ndarray, alpha: float):
    """A simulator policy (env, obs, rng) -> action for `mix` at `alpha`, over the env's valid candidates."""
    log_pop = np.asarray(log_pop, dtype=np.float64)

    def choose(env, obs, rng) -> int:
        valid = np.asarray(env.valid, dtype=bool)
        if not valid.any():
            return 0
        idx = np.flatnonzero(valid)
        s = heuristic_scores("mix", np.asarray(env.cand_scores)[idx], log_pop[np.asarray(env.cand)[idx]], alpha)
        return int(idx[int(np.argmax(s))])

    return choose


@dataclass
class GateDecision:
    """What serving uses and why: `served` is a learned policy's name or a heuristic; `figures` maps each
    compared policy to its mean session return and 95% half-width; `alpha` is the tuned mix weight."""

    served: str
    learned: str | None
    best_heuristic: str
    reason: str
    alpha: float = 1.0
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def uses_learned(self) -> bool:
        return self.served == self.learned

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, policy_dir: str | Path) -> Path:
        path = Path(policy_dir) / GATE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, policy_dir: str | Path) -> GateDecision | None:
        """The decision saved in `policy_dir`, or None for a bundle made before the gate."""
        path = Path(policy_dir) / GATE_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        served = d.get("served")
        if not isinstance(served, str) or not served:
            raise ValueError(f"{path}: 'served' must name a policy")
        if served not in HEURISTICS and served != d.get("learned"):
            raise ValueError(f"{path}: served {served!r} is neither a heuristic nor the learned policy")
        return cls(served=served, learned=d.get("learned"), best_heuristic=str(d.get("best_heuristic", "greedy")),
                   reason=str(d.get("reason", "")), alpha=float(d.get("alpha", 1.0)),
                   figures={str(k): {str(a): float(b) for a, b in v.items()}
                            for k, v in (d.get("figures") or {}).items()})


def decide(evaluation: dict[str, dict], learned: str | None, alpha: float = 1.0,
           heuristics: tuple[str, ...] = HEURISTICS) -> GateDecision:
    """The gate over an evaluation ({policy: {"return_mean", "ci95", ...}} on the same seeded sessions).

    The best heuristic is the one with the highest mean return; the learned policy is served only when
    return_mean - ci95 of it exceeds return_mean + ci95 of that heuristic."""
    present = [h for h in heuristics if h in evaluation]
    if not present:
        raise ValueError(f"evaluation has none of the heuristics {heuristics}")
    figures = {name: {"return_mean": float(r["return_mean"]), "ci95": float(r["ci95"])}
               for name, r in evaluation.items() if name in present or name == learned}
    best = max(present, key=lambda h: figures[h]["return_mean"])
    b = figures[best]
    if learned is None or learned not in figures:
        return GateDecision(best, learned, best, "no learned policy evaluated", alpha, figures)
    lrn = figures[learned]
    lo, hi = lrn["return_mean"] - lrn["ci95"], b["return_mean"] + b["ci95"]
    if lo > hi:
        reason = (f"{learned} {lrn['return_mean']:.3f} ± {lrn['ci95']:.3f} beats {best} "
                  f"{b['return_mean']:.3f} ± {b['ci95']:.3f} outside the 95% intervals")
        return GateDecision(learned, learned, best, reason, alpha, figures)
    reason = (f"{learned} {lrn['return_mean']:.3f} ± {lrn['ci95']:.3f} does not beat {best} "
              f"{b['return_mean']:.3f} ± {b['ci95']:.3f} outside the 95% intervals: serving {best}")
    return GateDecision(best, learned, best, reason, alpha, figures)


MIX_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def tune_mix(inputs, n_sessions: int, seed: int, alphas=MIX_ALPHAS, sim_cfg=None, spec=None) -> tuple[float, dict]:
    """The mix weight with the highest mean session return on the simulator sessions of `seed` (a validation
    seed, not the one the gate compares on, so the tuned heuristic is not flattered by its own noise); ties go
    to the larger alpha (closer to the ranker's order). Returns (alpha, {alpha: return_mean})."""
    from prefmine.policy.evaluation import evaluate_policies

    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))
    extra = {f"mix@{a:g}": mix_chooser(log_pop, a) for a in alphas}
    ev = evaluate_policies(inputs, None, n_sessions, seed=seed, sim_cfg=sim_cfg, spec=spec, extra=extra)
    table = {float(a): ev[f"mix@{a:g}"]["return_mean"] for a in alphas}
    best = max(table, key=lambda a: (table[a], a))
    return best, table


def gate_policy(inputs, runtime, n_sessions: int = 1000, seed: int = 0, val_seed: int | None = None,
                alphas=MIX_ALPHAS, sim_cfg=None, spec=None, learned: str = "learned") -> tuple[GateDecision, dict]:
    """Compare the learned policy (`runtime`, a PolicyRuntime; None: heuristics only) with greedy, popularity and
    a mix tuned on `val_seed` (default seed + 1) on the same seeded sessions of `seed`; `decide`.

    Returns (decision, report): report holds the evaluation of every policy (`evaluate_policies`' figures, the
    oracle included as a reference) and the mix tuning table. The caller saves the decision into the bundle."""
    from prefmine.policy.evaluation import evaluate_policies

    if sim_cfg is None and runtime is not None and hasattr(runtime, "config"):
        from prefmine.policy.simulator import SimulatorConfig

        sim_cfg = SimulatorConfig(**runtime.config["simulator"])
    spec = spec or getattr(runtime, "spec", None)
    val_seed = seed + 1 if val_seed is None else val_seed
    if val_seed == seed:
        raise ValueError("gate_policy: the mix must be tuned on other sessions than the comparison (val_seed)")
    alpha, tuning = tune_mix(inputs, n_sessions, val_seed, alphas, sim_cfg, spec)
    log_pop = np.log1p(np.asarray(inputs.item_popularity, dtype=np.float64))
    ev = evaluate_policies(inputs, {learned: runtime} if runtime is not None else None, n_sessions, seed=seed,
                           sim_cfg=sim_cfg, include_oracle=True, spec=spec, extra={"mix": mix_chooser(log_pop, alpha)})
    decision = decide(ev, learned if runtime is not None else None, alpha)
    report = {"sessions": n_sessions, "seed": seed, "val_seed": val_seed, "alpha": alpha,
              "mix_tuning": {f"{a:g}": r for a, r in tuning.items()}, "policies": ev, "decision": decision.to_dict()}
    return decision, report
