"""Benchmark: prefmine's off-policy estimators against obp on the Open Bandit Dataset sample (standard experiment).

The standard OBD experiment (obp's quickstart and examples/obd): estimate the click rate of ZOZOTOWN's Bernoulli
Thompson sampling policy from the logs of the uniform random policy (campaign "all"), and compare with the
on-policy value of Bernoulli TS, the mean click in its own log. Inputs, identical for both implementations:

  logs          prefmine.policy.obd.read_obd (random and bts, the sample shipped inside obp 0.4.1); checked
                equal, array by array, to obp's OpenBanditDataset.obtain_batch_bandit_feedback()
  action_dist   obp's BernoulliTS(is_zozotown_prior=True, campaign="all", random_state=12345)
                .compute_batch_action_dist(n_sim=--n-sim) (obp's own recipe); prefmine's vectorised
                bernoulli_ts_action_dist is reported beside it (its max |difference| per cell, and its IPS)
  q_hat         prefmine.policy.ope.fit_reward_table: (item, position) click rates, 3-fold cross-fitted

For each estimator (IPS, SNIPS, DM, DR): value, ci95 (percentile bootstrap over rounds, 1000 resamples, seed 0),
obp's value (OffPolicyEvaluation.estimate_policy_values), |difference|, obp's own bootstrap interval
(estimate_intervals, same number of resamples, random_state 12345: a different resampling, so close, not equal), and the relative error
|value - on_policy| / on_policy.

    python -m bench.ope_obd --out bench/results/ope_obd.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bench.data_scale import machine
from prefmine.policy import ope
from prefmine.policy.obd import ObdConfig, read_obd, zozotown_bts_prior

OBP_NAMES = {"ips": "ipw", "snips": "snipw", "dm": "dm", "dr": "dr"}


def obp_dataset(behavior_policy: str, campaign: str = "all"):
    """obp's OpenBanditDataset on the shipped sample. obp 0.4.1's default feature engineering (pre_process)
    calls DataFrame.drop / pd.concat with a positional axis, which pandas 3 rejects; it is re-stated here with
    axis keywords. load_raw_data (the part OPE reads: action, position, reward, pscore) is obp's, unchanged."""
    import pandas as pd
    from obp.dataset import OpenBanditDataset
    from sklearn.preprocessing import LabelEncoder

    class Pandas3OpenBanditDataset(OpenBanditDataset):
        def pre_process(self) -> None:
            user_cols = self.data.columns.str.contains("user_feature")
            self.context = pd.get_dummies(self.data.loc[:, user_cols], drop_first=True).values
            feature_0 = self.item_context["item_feature_0"]
            cats = self.item_context.drop(columns="item_feature_0").apply(LabelEncoder().fit_transform)
            self.action_context = pd.concat([cats, feature_0], axis=1).values

    return Pandas3OpenBanditDataset(behavior_policy=behavior_policy, campaign=campaign)


def obp_bts_action_dist(n_actions: int, len_list: int, n_rounds: int, n_sim: int, campaign: str = "all"):
    from obp.policy import BernoulliTS

    policy = BernoulliTS(n_actions=n_actions, len_list=len_list, is_zozotown_prior=True, campaign=campaign,
                         random_state=12345)
    return policy.compute_batch_action_dist(n_sim=n_sim, n_rounds=n_rounds)


def _obp_evaluation(bandit_feedback: dict):
    from obp.ope import DirectMethod, DoublyRobust, OffPolicyEvaluation
    from obp.ope import InverseProbabilityWeighting as IPW
    from obp.ope import SelfNormalizedInverseProbabilityWeighting as SNIPW

    return OffPolicyEvaluation(bandit_feedback=bandit_feedback,
                               ope_estimators=[IPW(), SNIPW(), DirectMethod(), DoublyRobust()])


def obp_estimates(bandit_feedback: dict, action_dist: np.ndarray, q_hat: np.ndarray) -> dict[str, float]:
    """obp's OffPolicyEvaluation.estimate_policy_values, keyed by prefmine's estimator names."""
    values = _obp_evaluation(bandit_feedback).estimate_policy_values(
        action_dist=action_dist, estimated_rewards_by_reg_model=q_hat)
    return {ours: float(values[theirs]) for ours, theirs in OBP_NAMES.items()}


def obp_intervals(bandit_feedback: dict, action_dist: np.ndarray, q_hat: np.ndarray,
                  n_boot: int) -> dict[str, list[float]]:
    """obp's 95% intervals (a bootstrap of the per-round terms, SNIPS normalised once on the full sample)."""
    ci = _obp_evaluation(bandit_feedback).estimate_intervals(
        action_dist=action_dist, estimated_rewards_by_reg_model=q_hat, n_bootstrap_samples=n_boot,
        random_state=12345)
    return {ours: [float(ci[theirs]["95.0% CI (lower)"]), float(ci[theirs]["95.0% CI (upper)"])]
            for ours, theirs in OBP_NAMES.items()}


def run(n_sim: int, n_boot: int) -> dict:
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    random_log = read_obd(ObdConfig("random", "all"))
    bts_log = read_obd(ObdConfig("bts", "all"))
    on_policy = bts_log.on_policy_value()

    dataset = obp_dataset("random", "all")
    feedback = dataset.obtain_batch_bandit_feedback()
    same_inputs = {k: bool(np.array_equal(feedback[k], getattr(random_log, k)))
                   for k in ("action", "position", "reward", "pscore")}
    if not all(same_inputs.values()):
        raise SystemExit(f"prefmine's OBD reader disagrees with obp's loader: {same_inputs}")

    t = time.perf_counter()
    action_dist = obp_bts_action_dist(dataset.n_actions, dataset.len_list, feedback["n_rounds"], n_sim)
    obp_sim_s = time.perf_counter() - t
    t = time.perf_counter()
    alpha, beta = zozotown_bts_prior("all")
    ours_dist = ope.bernoulli_ts_action_dist(alpha, beta, random_log.len_list, n_sim, seed=0,
                                             n_rounds=random_log.n_rounds)
    ours_sim_s = time.perf_counter() - t

    q_hat = ope.fit_reward_table(random_log.reward, random_log.action, random_log.position,
                                 random_log.n_actions, random_log.len_list, n_folds=3, seed=0)
    cfg = ope.OpeConfig(interval="bootstrap", n_boot=n_boot, seed=0)
    t = time.perf_counter()
    ours = ope.estimate_all(random_log.reward, random_log.action, random_log.position, random_log.pscore,
                            action_dist, q_hat, cfg)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = obp_estimates(feedback, action_dist, q_hat)
    obp_s = time.perf_counter() - t
    theirs_ci = obp_intervals(feedback, action_dist, q_hat, n_boot)

    estimators = {}
    for name, est in ours.items():
        estimators[name] = {
            "value": est.value, "ci95": list(est.ci), "obp_value": theirs[name],
            "obp_ci95": theirs_ci[name],
            "abs_diff_vs_obp": abs(est.value - theirs[name]),
            "relative_error_vs_on_policy": abs(est.value - on_policy) / on_policy,
            "ci95_covers_on_policy": bool(est.ci[0] <= on_policy <= est.ci[1]),
            **{k: v for k, v in est.extra.items()},
        }
    ips_own_sim = ope.ips(random_log.reward, random_log.action, random_log.position, random_log.pscore, ours_dist)
    return {
        "bench": "ope_obd", "machine": machine(),
        "data": {"source": "Open Bandit Dataset sample shipped in obp 0.4.1 (obp/dataset/obd), campaign all",
                 "random_log_rounds": random_log.n_rounds, "bts_log_rounds": bts_log.n_rounds,
                 "n_actions": random_log.n_actions, "len_list": random_log.len_list,
                 "rows_rejected": len(random_log.errors) + len(bts_log.errors),
                 "reader_matches_obp_loader": same_inputs},
        "experiment": "value of Bernoulli TS (ZOZOTOWN prior) estimated from the uniform random policy's log",
        "on_policy_value_bts": on_policy, "random_policy_value": random_log.on_policy_value(),
        "settings": {"n_sim": n_sim, "interval": "percentile bootstrap over rounds", "n_boot": n_boot,
                     "seed": 0, "q_hat": "(item, position) click rate, 3-fold cross-fitted, shrunk 10 rounds",
                     "action_dist": "obp BernoulliTS.compute_batch_action_dist, random_state=12345"},
        "estimators": estimators,
        "own_bts_simulation": {
            "max_abs_cell_diff_vs_obp": float(np.abs(ours_dist[0] - action_dist[0]).max()),
            "ips": ips_own_sim.value,
            "relative_error_vs_on_policy": abs(ips_own_sim.value - on_policy) / on_policy},
        "seconds": {"obp_bts_simulation": obp_sim_s, "prefmine_bts_simulation": ours_sim_s,
                    "prefmine_estimates_with_intervals": ours_s, "obp_estimates": obp_s,
                    "total": time.perf_counter() - t0},
    }


def main(argv=None) -> int:
    from bench.common import add_common, default_out, print_plan, require
    from prefmine.policy.obd import obp_sample_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common(ap, "ope_obd")
    ap.add_argument("--quick", action="store_true", help="10,000 Thompson sampling simulations, 200 resamples")
    ap.add_argument("--n-sim", type=int, default=100_000, help="Monte Carlo draws for BTS's action distribution")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    n_sim, n_boot = (10_000, 200) if a.quick else (a.n_sim, a.n_boot)
    out = Path(a.out) if a.out else default_out("ope_obd", a.quick)
    if a.plan:
        root = obp_sample_root()  # the Open Bandit Dataset sample inside the obp wheel (the dev extra)
        logs = [root / policy / "all" / "all.csv" for policy in ("random", "bts")]
        require(logs, hint="install the dev extra (obp==0.4.1)")
        return print_plan("ope_obd", logs=logs, n_sim=n_sim, n_boot=n_boot, out=out)
    report = run(n_sim, n_boot)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump({k: report[k] for k in ("on_policy_value_bts", "estimators")}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
