"""`prefmine evaluate`: ranking metrics of every model on the test split, and the policy in the simulator.

Ranking: popularity, item-kNN, the ID-only ranker and the full ranker (prefmine.evaluate). Policy: mean simulated
session return, CTR and 95% intervals of the learned policy against greedy top-1 from the ranker, popularity and
random, on the same seeded sessions. Rank's click calibration (the bundle's ads/ part): ECE and log loss on
the test users, raw and calibrated, with a reliability diagram (`calibration_reliability.png`). The report is printed as tables, written as JSON (`--json`), rendered by
prefmine.report into `evaluation.json`, `evaluation.md` and `evaluation_ndcg_at_k.png` in the output folder
(default `<bundle>/reports/`), and recorded in the bundle manifest under `metrics`.
"""

from __future__ import annotations

from pathlib import Path

from prefmine.bundle import update_manifest
from prefmine.data.dataset import load_dataset
from prefmine.evaluate import evaluate_models, format_table, write_report
from prefmine.report import write_reports


def format_policy_table(policies: dict) -> str:
    lines = ["policy in the simulator (mean session return, 95% CI, CTR)",
             "| policy | return | ci95 | ctr |", "|---|---|---|---|"]
    for name, r in policies.items():
        lines.append(f"| {name} | {r['return_mean']:.3f} | {r['ci95']:.3f} | {r['ctr']:.4f} |")
    return "\n".join(lines)


def run_evaluation(data: str | Path, bundle: str | Path, json_path: str | Path | None = None,
                   policy_sessions: int = 1000, record: bool = True, out_dir: str | Path | None = None) -> dict:
    """Evaluate every model (and the policy), print the tables and write the report files (prefmine.report)
    into `out_dir`, default `<bundle>/reports/`, printing where they are; `json_path` also gets the JSON."""
    ds = load_dataset(data, with_reviews=True)
    report = evaluate_models(ds, bundle)
    print(format_table(report), flush=True)
    if (Path(bundle) / "policy" / "policy_config.json").exists():
        from prefmine.policy.evaluation import evaluate_policies
        from prefmine.policy.inputs import simulator_inputs
        from prefmine.policy.runtime import PolicyRuntime

        policies = evaluate_policies(simulator_inputs(ds, Path(bundle)), PolicyRuntime(Path(bundle) / "policy"),
                                     n_sessions=policy_sessions, seed=1)
        report["policy"] = policies
        print(format_policy_table(policies), flush=True)
    out = Path(out_dir) if out_dir else Path(bundle) / "reports"
    from prefmine.ads.bundle_calibration import judge_bundle_calibration

    png = out / "calibration_reliability.png"
    calibration = judge_bundle_calibration(ds, bundle, png=png)
    if calibration is not None:  # Rank's click calibration on the test users (reliability diagram beside)
        report["ads_calibration"] = calibration
        print("ads calibration ({method}, test users): ECE {ece_raw:.4f} raw, {ece_calibrated:.4f} calibrated"
              .format(**calibration) + f"; reliability {png}", flush=True)
    if json_path:
        write_report(report, json_path)
    paths = write_reports(report, out)
    print("report: " + ", ".join(f"{kind} {path}" for kind, path in paths.items()), flush=True)
    if record:
        update_manifest(Path(bundle), metrics={"test": report["models"], "policy": report.get("policy", {}),
                                               **({"ads_calibration": calibration} if calibration else {})})
    return report
