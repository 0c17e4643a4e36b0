"""The training pipeline on real data: encoder and ranker through Ray Train + DeepSpeed (2 CPU workers, ZeRO-2),
the bundle they produce, evaluation against baselines, and the command-line contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefmine.bundle import Bundle, read_manifest
from prefmine.data.dataset import load_dataset

pytestmark = pytest.mark.slow


def test_bundle_layout_and_manifest(tiny_bundle, magazine5):
    m = read_manifest(tiny_bundle)
    assert m["format"] == "prefmine-bundle/2" and m["version"]
    assert m["data_hash"] == json.loads((magazine5 / "manifest.json").read_text())["data_hash"]
    assert set(m["components"]) >= {"encoder", "ranker", "ranker_id_only", "policy"}
    for rel in ("encoder/config.json", "encoder/model.safetensors", "encoder/tokenizer.json",
                "encoder/item_embeddings.npy", "encoder/user_text_embeddings.npy", "ranker/model.pt", "ranker_id_only/model.pt",
                "policy/policy_config.json", "catalog/items.parquet", "catalog/histories.parquet"):
        assert (tiny_bundle / rel).exists(), rel
    emb = np.load(tiny_bundle / "encoder/item_embeddings.npy")
    assert emb.shape == (157, m["components"]["encoder"]["dim"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_the_ranker_stage_saves_search_lexical_index_in_the_sealed_bundle(tiny_bundle):
    """Search's BM25 index over the catalogue lies in ranker/search/ (sealed with the rest), and with the
    encoder's item embeddings it finds an item by the words of its title."""
    from prefmine.search.bundle import SEARCH_DIR, has_index, load_bundle_searcher

    m = read_manifest(tiny_bundle)
    assert has_index(tiny_bundle)
    assert any(f.startswith(f"{SEARCH_DIR.as_posix()}/lexical/") for f in m["files"])
    assert m["components"]["ranker"]["metrics"]["search_index"]["items"] == 157
    emb = np.load(tiny_bundle / "encoder/item_embeddings.npy")
    searcher = load_bundle_searcher(tiny_bundle, emb)
    title = Bundle.load(tiny_bundle).titles[7]
    pool = searcher.retrieve(title, emb[7], 10)
    assert 7 in pool.idx.tolist() and pool.lexical[pool.idx.tolist().index(7)] > 0


def test_training_gates_the_policy_and_records_the_decision(tiny_bundle):
    """The policy stage compares the learned policy with greedy, popularity and the tuned mix on the same
    simulated sessions and writes the decision beside the policy (serving reads it) and into the manifest."""
    from prefmine.policy.gate import HEURISTICS, GateDecision

    gate = GateDecision.load(tiny_bundle / "policy")
    assert gate is not None and gate.learned == "learned"
    assert set(gate.figures) == {"learned", *HEURISTICS}
    assert gate.served in (gate.learned, gate.best_heuristic)
    assert gate.best_heuristic == max(HEURISTICS, key=lambda h: gate.figures[h]["return_mean"])
    rec = read_manifest(tiny_bundle)["components"]["policy"]["gate"]
    assert rec["served"] == gate.served and rec["reason"] == gate.reason
    assert set(rec["alpha_tuning"]) == {"0", "0.25", "0.5", "0.75", "1"} and rec["sessions"] >= 2


def test_the_published_bundle_is_sealed_verifies_and_holds_no_pickled_policy(tiny_bundle):
    import time

    from prefmine.integrity import IntegrityConfig, bundle_files, verify
    from prefmine.policy.runtime import PolicyRuntime

    m = read_manifest(tiny_bundle)
    assert sorted(m["files"]) == bundle_files(tiny_bundle)  # every file listed (nothing under reports/ yet)
    assert "signature" not in m  # no PREFMINE_BUNDLE_KEY[_FILE] in the test environment
    t0 = time.perf_counter()
    verify(tiny_bundle, IntegrityConfig())
    total = sum(f["bytes"] for f in m["files"].values())
    print(f"verify: {len(m['files'])} files, {total / 1e6:.1f} MB in {time.perf_counter() - t0:.3f} s")
    policy = sorted(rel for rel in m["files"] if rel.startswith("policy/"))
    assert {"policy/policy.safetensors", "policy/network.json", "policy/policy_config.json"} <= set(policy)
    assert not (tiny_bundle / "policy" / "rl_module").exists()
    rt = PolicyRuntime(tiny_bundle)
    assert rt.network.algorithm == "DQN" and rt.network.n_actions == rt.n_candidates


def test_encoder_stages_trained_with_deepspeed_on_two_workers(tiny_bundle):
    comp = read_manifest(tiny_bundle)["components"]["encoder"]
    enc = comp["metrics"]
    assert enc["mlm"]["heldout_mlm_loss"] < np.log(comp["vocab_size"]) - 1.0  # well below uniform guessing
    assert enc["rating"]["heldout_rating_mae"] < enc["rating"]["heldout_mean_baseline_mae"] * 1.05
    assert enc["contrastive_pairs"] > 500 and enc["contrastive"]["heldout_candidates"] > 10
    assert enc["embedding"]["users"] == 348
    # every stage's Ray Train checkpoint held DeepSpeed ZeRO-2 optimizer shards from both workers; the bundle
    # keeps the list of its files (checkpoint.json), not the checkpoint itself (prefmine.bundle.drop_checkpoints)
    runs = sorted((tiny_bundle / ".train").iterdir())
    for stage in ("encoder-mlm", "encoder-rating", "encoder-contrastive", "ranker"):
        assert any(r.name.startswith(stage) for r in runs), stage
    for run in runs:
        assert not list(run.glob("checkpoint_*")) and not (run / "checkpoint_manager_snapshot.json").exists(), run
        files = json.loads((run / "checkpoint.json").read_text())["files"]
        shards = {Path(f).name for f, size in files.items() if "/ds/" in f and f.endswith("optim_states.pt") and size}
        assert any("zero_pp_rank_0" in s for s in shards) and any("zero_pp_rank_1" in s for s in shards), run
        assert any(Path(f).name == "model.pt" for f in files), run


def test_every_training_run_logs_epoch_metrics_as_json_lines_and_tensorboard(tiny_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((tiny_bundle / ".train").iterdir())
    assert runs
    for run in runs:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in lines] == list(range(len(lines))) and len(lines) >= 1, run
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        loss = events.Scalars("loss")
        assert [e.step for e in loss] == [m["epoch"] for m in lines]
        assert np.allclose([e.value for e in loss], [m["loss"] for m in lines], rtol=1e-5), run
    ranker = next(r for r in runs if r.name.startswith("ranker-"))
    assert "valid_NDCG_at_10" in EventAccumulator(str(ranker / "tensorboard")).Reload().Tags()["scalars"]


def test_ranker_loss_goes_down_and_learns(tiny_bundle):
    comps = read_manifest(tiny_bundle)["components"]
    for name in ("ranker", "ranker_id_only"):
        hist = comps[name]["metrics"]["history"]
        assert hist[-1]["loss"] < hist[0]["loss"] - 0.1, (name, hist[0], hist[-1])
        assert hist[-1]["valid_NDCG@10"] > 0.0
    assert comps["ranker"]["config"]["fusion"] == "gate"
    assert comps["ranker_id_only"]["config"]["fusion"] == "none"


def test_runtimes_load_the_bundle(tiny_bundle, magazine5):
    from prefmine.ranker.runtime import RankerRuntime
    from prefmine.text.runtime import EncoderRuntime

    b = Bundle.load(tiny_bundle, key=b"prefmine-test-key")
    assert b.n_items == 157 and b.key_matches
    enc = EncoderRuntime(tiny_bundle)
    v = enc.embed(["a great magazine about computers", "cooking recipes monthly"])
    assert v.shape == (2, enc.dim) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    rr = RankerRuntime(tiny_bundle)
    ds = load_dataset(magazine5)
    hist = ds.history(ds.eval_users("test")[0], "test")
    idx, scores = rr.top_n([hist, np.zeros(0, dtype=np.int64)], 10, [set(hist.tolist()), set()])
    assert idx.shape == (2, 10) and not set(idx[0]) & set(hist.tolist())
    assert np.all(np.diff(scores[0]) <= 1e-6)
    # cold start: the most popular items
    assert np.allclose(np.sort(b.popularity[idx[1]])[::-1], np.sort(b.popularity)[::-1][:10])


def test_cli_rejects_bad_input_with_named_fields(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "prefmine.cli", *args], capture_output=True, text=True,
                              timeout=120)

    r = run("data", "prepare", "--source", "amazon2018", "--raw", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--category" in r.stderr
    r = run("data", "prepare", "--source", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--source" in r.stderr
    r = run("data", "synth", "--users", "0", "--items", "5", "--events", "10", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "users" in r.stderr and not (tmp_path / "s").exists()
    r = run("data", "forget", "--data", str(tmp_path / "missing"), "--user", "u1")
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = run("evaluate", "--data", str(tmp_path / "missing"), "--bundle", str(tmp_path))
    assert r.returncode == 2 and "manifest.json" in r.stderr
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ranker: {dimm: 3}\n")
    r = run("train", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--config", str(cfg))
    assert r.returncode == 2 and "dimm" in r.stderr


def test_serve_refuses_another_pseudonymisation_key(tiny_bundle):
    env = {**os.environ, "PREFMINE_PSEUDONYM_KEY": "not-the-key-the-data-was-prepared-with"}
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "serve", "--bundle", str(tiny_bundle), "--grpc-port",
                        "50999"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "PREFMINE_PSEUDONYM_KEY" in r.stderr


def test_the_ranker_stage_saves_a_sealed_click_calibration(tiny_bundle):
    """Rank's calibration (prefmine.ads.bundle_calibration) lies in ads/ as JSON + .npz, sealed with the rest,
    with its out-of-sample figures in the manifest's ads component."""
    from prefmine.ads.bundle_calibration import load_bundle_calibrator

    m = read_manifest(tiny_bundle)
    ads = m["components"]["ads"]
    assert {"ads/calibrator.json", "ads/calibrator.npz"} <= set(m["files"])
    assert ads["judged_rows"] > 0 and 0 <= ads["ece_calibrated"] <= 1 and 0 <= ads["ece_raw"] <= 1
    assert load_bundle_calibrator(tiny_bundle).method == ads["method"]
