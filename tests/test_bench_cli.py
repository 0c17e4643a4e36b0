"""Every benchmark's command line works on a fresh clone: `--help` for each module under bench/, and `--plan`
(resolve the inputs the default invocation would use, check they exist, print the settings, stop) for each
benchmark that has one. Run as real subprocesses with the project's interpreter, like a person would.

A benchmark module added to bench/ is picked up here automatically; one that cannot plan must be listed in
NO_PLAN with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import data_root

ROOT = Path(__file__).resolve().parents[1]
HELPERS = {"__init__", "common", "loop_service"}  # not benchmarks (loop_service: bench.closed_loop's server)
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in HELPERS)
NO_PLAN = {
    "quality": "plans nothing cheaply: its data discovery is prepare() itself (tests/test_recbole_anchor.py)",
    "recbole_anchor": "a helper of bench.quality; --data and --out are required",
    "recbole_runner": "runs inside .venv-recbole; --data-dir, --dataset and --out are required",
    "rectools_anchor": "a helper of bench.quality; --dataset is required, and it trains",
    "rectools_runner": "runs inside .venv-rectools; --split, --out and --state-dir are required",
    "ranker_resume": "a helper of bench.quality (driven by a resume test); --data and --bundle are required",
    "serve_latency": "needs a trained --bundle (checked below without one)",
    "fuzz": "needs a trained --bundle to serve (planned below with a stand-in manifest)",
    "head_failover": "needs a trained --bundle to serve (planned below with a stand-in manifest)",
    "catalog_latency": "needs a trained --bundle to serve",
    "seqrec_check": "scores one already trained ranker: --bundle is required, and there is nothing to plan",
    "ranker_update": "fine-tunes an already trained ranker: --bundle is required",
    "loop_probe": "compares an already trained bundle's policies: --bundle is required",
    "policy_paired": "reruns a policy bench.policy trained: --data, --bundle, --policy and --seed are required",
}


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PREFMINE_DATA_DIR": str(data_root()), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def plan(bench: str, *args: str, env: dict | None = None) -> dict:
    p = run("-m", f"bench.{bench}", "--plan", *args, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["bench"] == bench
    return out["plan"]


def test_every_bench_module_is_covered():
    assert {"policy", "encoder_quality", "data_scale", "retrieval", "quality"} <= set(BENCHES)
    assert set(NO_PLAN) <= set(BENCHES)


@pytest.mark.parametrize("bench", BENCHES)
def test_help(bench):
    p = run("-m", f"bench.{bench}", "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("usage:")
    if bench not in NO_PLAN:
        assert "--plan" in p.stdout and "--out" in p.stdout


@pytest.mark.parametrize("bench", [b for b in BENCHES if b not in NO_PLAN and b != "policy"])
def test_plan_of_the_default_invocation(bench):
    settings = plan(bench)
    assert Path(settings["out"]) == ROOT / "bench" / "results" / f"{bench}.json"
    for path in settings.get("inputs", []):
        assert Path(path).is_file(), path
    # a --quick smoke run never overwrites the rendered results
    assert Path(plan(bench, "--quick")["out"]) == ROOT / "runs" / "bench" / f"{bench}.quick.json"


def test_policy_default_finds_the_magazine_files_through_the_data_dir(tmp_path):
    """The default run (no --data/--bundle) links Magazine 5-core from PREFMINE_DATA_DIR into its workdir and
    prepares it; --plan resolves exactly the files prepare() reads there."""
    settings = plan("policy", "--workdir", str(tmp_path / "work"))
    assert [Path(f).name for f in settings["files"]] == ["Magazine_Subscriptions_5.json.gz"]
    assert Path(settings["files"][0]).resolve() == (
        data_root() / "amazon2018" / "Magazine_Subscriptions" / "Magazine_Subscriptions_5.json.gz").resolve()
    assert Path(settings["out"]) == ROOT / "bench" / "results" / "policy.json"


def test_policy_default_dataset_is_prepared_from_the_data_dir(tmp_path, monkeypatch):
    """The step that used to fail (`<workdir>/raw/Magazine_Subscriptions` not found): the real preparation."""
    from bench.policy import _default_data

    monkeypatch.setenv("PREFMINE_DATA_DIR", str(data_root()))
    manifest = json.loads((_default_data(tmp_path) / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 348 and manifest["counts"]["items"] == 157


@pytest.mark.parametrize("bench", ["policy", "encoder_quality"])
def test_missing_data_names_the_file_and_the_variable(bench, tmp_path):
    p = run("-m", f"bench.{bench}", "--plan", "--workdir" if bench == "policy" else "--seed",
            str(tmp_path / "w") if bench == "policy" else "1", env={"PREFMINE_DATA_DIR": str(tmp_path / "empty")})
    assert p.returncode != 0
    assert str(tmp_path / "empty" / "amazon2018") in p.stderr and "PREFMINE_DATA_DIR" in p.stderr


def test_ads_plans_the_beauty_sequences_and_a_reliability_png_beside_its_json(tmp_path):
    settings = plan("ads")
    assert [Path(f).resolve() for f in settings["inputs"]] == [
        (data_root() / "seqrec" / "Beauty" / "Beauty.txt").resolve()]
    assert Path(settings["reliability_png"]) == ROOT / "bench" / "results" / "ads_reliability.png"
    assert settings["requests"] == 20_000 and settings["reserves"] == [0.05, 0.03, 0.02]
    out = tmp_path / "x" / "ads.json"
    quick = plan("ads", "--quick", "--out", str(out), "--dataset", "Yelp")
    assert quick["requests"] == 2000 and Path(quick["reliability_png"]) == out.with_name("ads_reliability.png")
    assert Path(quick["inputs"][0]).name == "Yelp.txt" and not out.parent.exists()  # --plan writes nothing
    p = run("-m", "bench.ads", "--plan", env={"PREFMINE_DATA_DIR": str(tmp_path / "empty")})
    assert p.returncode != 0
    assert str(tmp_path / "empty" / "seqrec" / "Beauty" / "Beauty.txt") in p.stderr and "PREFMINE_DATA_DIR" in p.stderr


def test_serve_latency_refuses_a_missing_bundle_and_an_unknown_system(tmp_path):
    p = run("-m", "bench.serve_latency", "--bundle", str(tmp_path / "nope"), "--plan")
    assert p.returncode != 0 and "--bundle" in p.stderr and str(tmp_path / "nope") in p.stderr
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    p = run("-m", "bench.serve_latency", "--bundle", str(tmp_path / "b"), "--systems", "inprocess,warp", "--plan")
    assert p.returncode != 0 and "'warp'" in p.stderr


def test_head_failover_plans_and_refuses_a_missing_bundle(tmp_path):
    """bench.head_failover: a 15 s outage by default, written to bench/results/head_failover.json; a folder
    without a manifest is refused naming --bundle."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    settings = plan("head_failover", "--bundle", str(tmp_path / "b"))
    assert settings["outage_s"] == 15.0 and Path(settings["bundle"]) == tmp_path / "b"
    assert Path(settings["out"]) == ROOT / "bench" / "results" / "head_failover.json"
    p = run("-m", "bench.head_failover", "--plan", "--bundle", str(tmp_path))
    assert p.returncode != 0 and "--bundle" in p.stderr


def test_fuzz_plans_10000_requests_per_rpc_and_checks_its_arguments(tmp_path):
    """bench.fuzz: the default is 10,000 requests of every RPC through both paths, written to
    bench/results/fuzz.json; --per-rpc and --rpcs narrow it; a missing bundle or an unknown RPC is refused."""
    from prefmine.fuzzing import RPCS

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    settings = plan("fuzz", "--bundle", str(tmp_path / "b"))
    assert settings["per_rpc"] == 10_000 and settings["rpcs"] == list(RPCS)
    assert settings["paths"] == ["proxy", "direct"]
    assert Path(settings["out"]) == ROOT / "bench" / "results" / "fuzz.json"
    quick = plan("fuzz", "--bundle", str(tmp_path / "b"), "--quick")
    assert Path(quick["out"]) == ROOT / "runs" / "bench" / "fuzz.quick.json" and quick["per_rpc"] == 200
    small = plan("fuzz", "--bundle", str(tmp_path / "b"), "--per-rpc", "50", "--rpcs", "Rank,ModelInfo")
    assert small["per_rpc"] == 50 and small["rpcs"] == ["Rank", "ModelInfo"]
    p = run("-m", "bench.fuzz", "--bundle", str(tmp_path / "nope"), "--plan")
    assert p.returncode != 0 and "--bundle" in p.stderr and str(tmp_path / "nope") in p.stderr
    p = run("-m", "bench.fuzz", "--bundle", str(tmp_path / "b"), "--rpcs", "Rank,Teleport", "--plan")
    assert p.returncode != 0 and "'Teleport'" in p.stderr
    p = run("-m", "bench.fuzz", "--bundle", str(tmp_path / "b"), "--per-rpc", "0", "--plan")
    assert p.returncode != 0 and "--per-rpc" in p.stderr


def test_closed_loop_plans_rounds_and_sessions_and_refuses_a_bundle_without_a_policy(tmp_path):
    """bench.closed_loop: by default 4 rounds of 2,000 sessions on a tiny bundle trained from Magazine 5-core,
    written to bench/results/closed_loop.json; --quick is one round of 30; a --bundle without the policy's
    response model (the simulated users' answers) is refused naming --bundle."""
    settings = plan("closed_loop")
    assert settings["rounds"] == 4 and settings["sessions_per_round"] == 2000
    assert settings["max_sessions"] == 5 * 2000 + 4 * 1000 and settings["learning_policy"] == "learned"
    assert [Path(f).name for f in settings["inputs"]] == ["Magazine_Subscriptions_5.json.gz"]
    (tmp_path / "b" / "policy").mkdir(parents=True)
    (tmp_path / "b" / "manifest.json").write_text("{}")
    p = run("-m", "bench.closed_loop", "--plan", "--bundle", str(tmp_path / "b"))
    assert p.returncode != 0 and "--bundle" in p.stderr and "response_model.npz" in p.stderr
    (tmp_path / "b" / "policy" / "response_model.npz").write_bytes(b"")
    quick = plan("closed_loop", "--quick", "--bundle", str(tmp_path / "b"))
    assert quick["rounds"] == 1 and quick["sessions_per_round"] == 30 and quick["inputs"] == []
    assert Path(quick["bundle"]) == tmp_path / "b"
    assert Path(quick["out"]) == ROOT / "runs" / "bench" / "closed_loop.quick.json"


def test_cluster_scale_summaries_leave_out_the_first_epoch_and_compare_with_the_baseline():
    """prefmine.scaling, what bench.cluster_scale reports: rates after the start-up epoch, ratios to a baseline."""
    from prefmine.scaling import compare, training_summary

    history = [{"samples_per_s": 10.0, "epoch_seconds": 9.0, "ended_at": 100.0},
               {"samples_per_s": 40.0, "epoch_seconds": 2.0, "ended_at": 103.0},
               {"samples_per_s": 60.0, "epoch_seconds": 1.0, "ended_at": 107.5}]
    assert training_summary(history) == {"samples_per_s": 50.0, "epoch_seconds": 1.5, "epoch_period_s": 4.5,
                                         "timed_epochs": 2}
    assert training_summary(history[:2])["epoch_period_s"] is None  # 100 -> 103 holds the first epoch's end
    assert training_summary(history[:1])["samples_per_s"] == 10.0
    with pytest.raises(ValueError):
        training_summary([])
    results = [{"phase": "one", "qps": 80.0}, {"phase": "two", "qps": 60.0}]
    assert compare(results, "two", "one", "qps") == {"phase": "two", "baseline": "one", "metric": "qps",
                                                     "value": 60.0, "baseline_value": 80.0, "ratio": 0.75}
    with pytest.raises(KeyError, match="three"):
        compare(results, "three", "one", "qps")


def test_search_relevance_reviews_finds_its_files_and_checks_its_arguments(tmp_path):
    """bench.search_relevance_reviews: by default Magazine_Subscriptions' 5-core reviews and metadata from
    PREFMINE_DATA_DIR, names kept out of queries by title, brand and capitalised description words, both text
    choices made on validation, 2,000 resamples; --category picks another folder; missing data and bad arguments
    are refused."""
    settings = plan("search_relevance_reviews")
    folder = data_root() / "amazon2018" / "Magazine_Subscriptions"
    assert [Path(f).resolve() for f in settings["inputs"]] == [
        (folder / "Magazine_Subscriptions_5.json.gz").resolve(), (folder / "meta_Magazine_Subscriptions.json.gz").resolve()]
    assert (settings["name_words"], settings["lexical_text"], settings["dense_text"], settings["boot"]) == (
        "description_caps", "choose", "choose", 2000)
    gift = plan("search_relevance_reviews", "--category", "Gift_Cards", "--name-words", "title_brand")
    assert [Path(f).name for f in gift["inputs"]] == ["Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"]
    p = run("-m", "bench.search_relevance_reviews", "--plan", env={"PREFMINE_DATA_DIR": str(tmp_path / "empty")})
    assert p.returncode != 0
    assert str(tmp_path / "empty" / "amazon2018" / "Magazine_Subscriptions") in p.stderr and "PREFMINE_DATA_DIR" in p.stderr
    for bad in (["--valid-share", "1.5"], ["--lexical-text", "reviews"], ["--boot", "3"]):
        p = run("-m", "bench.search_relevance_reviews", "--plan", *bad)
        assert p.returncode == 2 and bad[0] in p.stderr, bad
