"""Shared fixtures: the real data directory, prepared datasets, one local Ray, and one tiny trained bundle.

Real data comes from $PREFMINE_DATA_DIR (CI: ../shared/data beside the checkout). The session Ray is started
once (2 CPUs, one thread per worker, auth disabled so a second driver such as `ray job submit` could join), and
the tiny bundle is trained once through the real pipeline (Ray Train + DeepSpeed + RLlib) and shared.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "prefmine-test-key")


def data_root() -> Path:
    return Path(os.environ.get("PREFMINE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    root = data_root()
    if not (root / "amazon2018").is_dir():
        pytest.fail(f"real data not found at {root}: set PREFMINE_DATA_DIR (CI: ../shared/data)")
    return root


@pytest.fixture(scope="session")
def magazine5(raw_dir, tmp_path_factory) -> Path:
    """Magazine_Subscriptions 5-core reviews + metadata (no ratings CSV): small, real, with text."""
    import shutil

    from prefmine.data.prepare import prepare

    raw = tmp_path_factory.mktemp("raw_mag5") / "amazon2018"
    src = raw_dir / "amazon2018" / "Magazine_Subscriptions"
    dst = raw / "Magazine_Subscriptions"
    dst.mkdir(parents=True)
    for name in ("Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz"):
        os.symlink(src / name, dst / name)
    out = tmp_path_factory.mktemp("data") / "magazine5"
    prepare("amazon2018", raw, out, "Magazine_Subscriptions")
    shutil.rmtree(raw.parent, ignore_errors=True)
    return out


def bundle_versions(bundle: Path, root: Path, suffixes: dict[str, str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Copies of `bundle` under `root`, one per name, each its own version: the manifest's version plus the
    name's suffix ('' keeps it). ({name: directory}, {name: version}), for rollout tests."""
    import json
    import shutil

    dirs, versions = {}, {}
    for name, suffix in suffixes.items():
        d = dirs[name] = root / name
        shutil.copytree(bundle, d, symlinks=True)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["version"] = versions[name] = f"{manifest['version']}{suffix}"
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dirs, versions


def make_tiny_bert(path, texts, hidden=32):
    """A random 2-layer BERT with a WordPiece vocabulary of the texts' frequent words, saved like any HF model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir():
    """The function writing a tiny random BERT checkpoint directory (see make_tiny_bert)."""
    return make_tiny_bert


@pytest.fixture(scope="session")
def ray_session():
    from cluster.ray_env import ensure_ray

    ray = ensure_ray(num_cpus=2, dashboard=False)
    yield ray
    ray.shutdown()


TINY_TEST_CONFIG = """
encoder: {mlm_epochs: 2, finetune_epochs: 1, vocab_size: 2000}
ranker: {min_steps: 150, epochs: 4}
policy: {max_iterations: 4, time_budget_s: 40}
"""


@pytest.fixture(scope="session")
def tiny_bundle(magazine5, ray_session, tmp_path_factory) -> Path:
    """A real bundle: encoder (MLM + rating), fused and ID-only rankers, DQN policy, on Magazine 5-core."""
    from cluster.pipeline import train_bundle

    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(TINY_TEST_CONFIG)
    out = tmp_path_factory.mktemp("bundles") / "magazine5"
    train_bundle(magazine5, out, preset="tiny", config_file=str(cfg))
    return out


# Markers (registered in pyproject.toml, explained in docs/testing.md). Tests that start Ray, train a model, or
# start Ray Serve or a `ray start` node are marked here from the fixtures they use, so a new test that takes
# one of these fixtures is never counted as fast by accident; a test may also mark itself `slow`.
_SLOW_FIXTURES = {"tiny_bundle", "ray_session", "ray_head", "server_proc", "bundle_path"}
_SERVE_MODULES = {"test_serve_faults", "test_serve_feedback", "test_serve_deploy"}
_CLUSTER_FIXTURES = {"ray_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if fixtures & _SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "server_proc" in fixtures or module in _SERVE_MODULES:
            item.add_marker(pytest.mark.serve)
            item.add_marker(pytest.mark.slow)
        if fixtures & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
