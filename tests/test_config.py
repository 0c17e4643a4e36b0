"""The training config tree: one preset table, YAML sections and ``section.key=value`` overrides for every
component, and errors that name an unknown section, key or bad value."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefmine import config as C
from prefmine import train_config as T

ROOT = Path(__file__).resolve().parent.parent


def test_presets_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ranker: {dim: 32, fusion: none}\nretrieval: {kind: hnsw, m: 16}\nembed: {batch_size: 8}\n")
    cfg = T.load("tiny", f, ["ranker.epochs=3", "dist.num_workers=1", "simulator.slate_size=3"])
    assert (cfg.ranker.dim, cfg.ranker.fusion, cfg.ranker.epochs) == (32, "none", 3)
    assert (cfg.retrieval.kind, cfg.retrieval.m, cfg.embed.batch_size) == ("hnsw", 16, 8)
    assert (cfg.dist.num_workers, cfg.simulator.slate_size) == (1, 3)
    # Search's section: the description indexed by BM25 (kept in LEXICAL_FIELDS order whatever the order given)
    fields = T.load("tiny", None, ["search.lexical_fields=[description, title]"]).search.lexical_fields
    assert fields == ("title", "description")
    assert cfg.encoder == T.PRESETS["tiny"].encoder  # untouched sections keep the preset's values
    assert T.PRESETS["base"].encoder.hidden > T.PRESETS["tiny"].encoder.hidden
    assert T.PRESETS["large"].dist.num_workers == 4 and T.PRESETS["large"].ranker.softmax == "sampled"


def test_every_section_and_key_is_settable_from_a_file(tmp_path):
    """The tree's promise: every field of every component's dataclass can be set from --config."""
    base = T.PRESETS["tiny"]
    for section in T.SECTIONS:
        for fld in dataclasses.fields(getattr(base, section)):
            value = getattr(getattr(base, section), fld.name)
            f = tmp_path / "one.yaml"
            f.write_text(json.dumps({section: {fld.name: list(value) if isinstance(value, tuple) else value}}))
            got = getattr(getattr(T.load("tiny", f), section), fld.name)
            assert got == value, (section, fld.name)


def test_unknown_sections_keys_and_bad_values_are_named(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("rankr: {dim: 3}\n")
    with pytest.raises(C.ConfigError, match="rankr"):
        T.load("tiny", bad)
    bad.write_text("ranker: {dimm: 3}\n")
    with pytest.raises(C.ConfigError, match="dimm"):
        T.load("tiny", bad)
    with pytest.raises(C.ConfigError, match="'epochs'.*integer"):
        T.load("tiny", None, ["ranker.epochs=many"])
    with pytest.raises(C.ConfigError, match="SECTION.KEY"):
        T.load("tiny", None, ["epochs=3"])
    for item, key in (("update.ranker_steps=-1", "ranker_steps"), ("update.ranker_lr=0", "ranker_lr"),
                      ("search.lexical_fields=[title,summary]", "lexical_fields"),
                      ("search.lexical_weight=2", "lexical_weight")):
        with pytest.raises(C.ConfigError, match=key):
            T.load("tiny", None, [item])
    with pytest.raises(C.ConfigError, match="preset"):
        T.load("huge")
    with pytest.raises(C.ConfigError, match="key=value"):
        C.parse_overrides(["epochs"])
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(C.ConfigError, match="mapping"):
        C.load_file(bad)
    assert T.in_section("policy", ["lr=0.1", "simulator.slate_size=4"]) == ["policy.lr=0.1",
                                                                           "simulator.slate_size=4"]


def test_train_command_rejects_an_unknown_override_before_training(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "train", "--data", str(tmp_path), "--out",
                        str(tmp_path / "b"), "--set", "ranker.no_such_key=1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "no_such_key" in r.stderr


def test_custom_resources_from_a_file_or_an_override_and_bad_ones_named(tmp_path):
    """dist.worker_resources and embed.actor_resources: the placement keys (docs/configuration.md)."""
    f = tmp_path / "c.yaml"
    f.write_text("dist: {worker_resources: {worker_node: 1}}\n")
    cfg = T.load("tiny", f, ['embed.actor_resources={"worker_node": 0.5, "ssd": 1}'])
    assert cfg.dist.worker_resources == {"worker_node": 1.0}
    assert cfg.embed.actor_resources == {"worker_node": 0.5, "ssd": 1.0}
    for bad, match in (("dist.worker_resources=[1, 2]", "mapping"), ("dist.worker_resources={CPU: 2}", "CPU"),
                       ("embed.actor_resources={worker_node: -1}", "worker_node"),
                       ("embed.actor_resources={worker_node: lots}", "worker_node"),
                       ("dist.poll_interval_s=0", "poll_interval_s")):
        with pytest.raises(C.ConfigError, match=match):
            T.load("tiny", None, [bad])


def test_embedding_actor_count_follows_cpus_and_custom_resources():
    from prefmine.text.config import EmbedConfig

    cluster = {"CPU": 6.0, "worker_node": 2.0}
    assert EmbedConfig(batch_size=10).max_actors_on(cluster, 1000) == 6
    assert EmbedConfig(batch_size=10, actor_resources={"worker_node": 1}).max_actors_on(cluster, 1000) == 2
    assert EmbedConfig(batch_size=10, actor_resources={"gpu_box": 1}).max_actors_on(cluster, 1000) == 1
    assert EmbedConfig(batch_size=500).max_actors_on(cluster, 1000) == 2  # never more actors than batches
    assert EmbedConfig(batch_size=10, max_actors=3, actor_resources={"worker_node": 1}).max_actors_on(cluster, 99) == 3


def test_serve_placement_file_gives_deployment_options_and_bad_ones_named(tmp_path):
    """`prefmine serve --placement`: the proxy's location and each deployment's Deployment.options, its own CPUs
    kept beside the custom resources; unknown deployments, keys and bad values named."""
    from prefmine.serving.placement import load_placement, placement_from

    f = tmp_path / "placement.yaml"
    f.write_text("proxy_location: HeadOnly\ndeployments:\n  RankerDeployment: {num_replicas: 2, "
                 "max_replicas_per_node: 1, resources: {worker_node: 1}}\n")
    p = load_placement(f)
    assert p.proxy_location == "HeadOnly"
    assert p.options_for("RankerDeployment", {"num_cpus": 0.25, "resources": {"ssd": 1}}) == {
        "num_replicas": 2, "max_replicas_per_node": 1,
        "ray_actor_options": {"num_cpus": 0.25, "resources": {"ssd": 1, "worker_node": 1.0}}}
    assert p.options_for("EncoderDeployment", {"num_cpus": 0.25}) == {}
    assert placement_from({"deployments": p.deployments_dict()}).deployments == p.deployments  # build_app's form
    assert load_placement(None).proxy_location == "EveryNode"
    for bad, match in (({"proxy_location": "Everywhere"}, "proxy_location"),
                       ({"deployments": {"Ranker": {}}}, "Ranker"),
                       ({"deployments": {"RankerDeployment": {"replicas": 2}}}, "replicas"),
                       ({"deployments": {"RankerDeployment": {"num_replicas": 0}}}, "num_replicas"),
                       ({"deployments": {"EncoderDeployment": {"resources": {"CPU": 1}}}}, "CPU"),
                       ({"nodes": 2}, "nodes")):
        with pytest.raises(C.ConfigError, match=match):
            placement_from(bad)


def test_the_command_line_and_the_config_tree_load_without_torch():
    """`prefmine --help`, an argument error or a config check must not pay for torch and transformers (seconds of
    CPU in every such call): the configs live in modules of their own (prefmine/ranker/config.py,
    prefmine/text/config.py)."""
    code = ("import sys; from prefmine.cli.main import build_parser; build_parser(); import prefmine.train_config; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_ads_section_from_the_tree_and_serve_takes_only_it(tmp_path, capsys):
    """The ads component (Rank's auction, the click calibration) is a section of the tree like the others; bad
    values are named before anything runs; `prefmine serve --set` refuses other sections and bad ads values
    before it starts Ray."""
    from prefmine.ads.config import AdsConfig
    from prefmine.cli.main import main

    f = tmp_path / "ads.yaml"
    f.write_text("ads: {reserves: [0.2, 0.1], calibration_methods: [platt]}\n")
    cfg = T.load("tiny", f, ["ads.hold_ttl_s=300", "ads.freq_cap=5", "ads.calibration_negatives=9"])
    assert cfg.ads == AdsConfig(reserves=(0.2, 0.1), calibration_methods=("platt",), hold_ttl_s=300.0, freq_cap=5,
                                calibration_negatives=9)
    assert T.PRESETS["tiny"].ads == AdsConfig()  # the one copy of the defaults
    for item, named in (("ads.freq_cap=0", "freq_cap"), ("ads.reserves=[0.01, 0.1]", "reserves"),
                        ("ads.calibration_methods=[magic]", "calibration_methods"), ("ads.hold_ttll_s=3", "hold_ttll_s")):
        with pytest.raises(C.ConfigError, match=named):
            T.load("tiny", None, [item])
    serve = ["serve", "--bundle", str(tmp_path / "no-bundle"), "--grpc-port", "1", "--set"]
    with pytest.raises(SystemExit):
        main([*serve, "ranker.epochs=3"])
    assert "serving takes the ads section only" in capsys.readouterr().err
    assert main([*serve, "ads.freq_cap=0"]) == 2
    assert "AdsConfig.freq_cap" in capsys.readouterr().err
