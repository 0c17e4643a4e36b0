"""One config tree for training: every component's dataclass under one root, and one preset table.

`TrainConfig` holds one section per component, each the component's own dataclass (defined beside its code):

| section | dataclass | drives |
|---|---|---|
| `encoder` | `prefmine.text.encoder.EncoderConfig` | the BERT text encoder (MLM, rating, contrastive stages) |
| `embed` | `prefmine.text.runtime.EmbedConfig` | the batch job that embeds the catalogue with the encoder |
| `ranker` | `prefmine.ranker.model.RankerConfig` | the sequential ranker and its blend |
| `retrieval` | `prefmine.ranker.retrieval.RetrievalConfig` | the item index serving takes candidates from |
| `policy` | `prefmine.policy.config.PolicyTrainConfig` | the RLlib slate policy and its gate |
| `simulator` | `prefmine.policy.simulator.SimulatorConfig` | the user simulator the policy learns and is gated in |
| `update` | `prefmine.policy.config.UpdateConfig` | the incremental policy update job |
| `dist` | `prefmine.train_task.DistConfig` | how Ray Train + DeepSpeed distribute the encoder and ranker |
| `search` | `prefmine.search.config.SearchConfig` | Search: the fields BM25 indexes, fusion and its weights, personalisation, facets (saved with the bundle's index) |
| `ads` | `prefmine.ads.config.AdsConfig` | Rank's ad auction (reserves, pacing, caps, hold TTL) and the click calibration the ranker stage fits |

`PRESETS` is the one table of presets (`tiny`, `base`, `large`): a whole tree each. `load(preset, file,
overrides)` starts from a preset, applies a YAML/JSON file whose top-level keys are section names, then
``section.key=value`` overrides (``prefmine train --set ranker.epochs=3``); an unknown section or key anywhere is an
error that names it, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefmine import config as C
from prefmine.ads.config import AdsConfig
from prefmine.policy.config import PolicyTrainConfig, UpdateConfig
from prefmine.policy.simulator import SimulatorConfig
from prefmine.ranker.config import RankerConfig
from prefmine.ranker.retrieval import RetrievalConfig
from prefmine.search.config import SearchConfig
from prefmine.text.config import EmbedConfig, EncoderConfig
from prefmine.train_task import DistConfig


@dataclass(frozen=True)
class TrainConfig:
    """Every training component's settings; see the module docstring for what each section drives."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    policy: PolicyTrainConfig = field(default_factory=PolicyTrainConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    ads: AdsConfig = field(default_factory=AdsConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))

PRESETS: dict[str, TrainConfig] = {
    # one CPU box, minutes: the demo, the tests and the README's first command
    "tiny": TrainConfig(
        ranker=RankerConfig(dim=64, layers=2, epochs=10, min_steps=300, batch_size=64),
        simulator=SimulatorConfig(n_candidates=10, max_steps=10, slate_size=5),
        update=UpdateConfig(gate_sessions=200),  # the update's gate in seconds on a CPU box
    ),
    # the benchmark sets on one GPU (the ranker: what bench.quality runs on the Amazon 5-core categories)
    "base": TrainConfig(
        encoder=EncoderConfig(vocab_size=16000, hidden=256, layers=4, heads=4, intermediate=1024, max_len=128,
                              mlm_epochs=10, finetune_epochs=3, batch_size=64, max_texts=500000),
        ranker=RankerConfig(dim=64, layers=2, heads=2, batch_size=16, dropout=0.5, epochs=200, max_epochs=200,
                            patience=30),
        policy=PolicyTrainConfig(simulator="base", max_iterations=100, time_budget_s=1800.0, hiddens=(256, 256),
                                 train_batch_size=256, rollout_fragment_length=32, epsilon_timesteps=30_000,
                                 learning_starts=2000, target_update_freq=2000, num_env_runners=2,
                                 ppo_minibatch_size=256, checkpoint_every=5),
        simulator=SimulatorConfig(n_candidates=20, max_steps=20, slate_size=10),
        update=UpdateConfig(max_iterations=30, time_budget_s=900.0, epsilon_timesteps=10_000, learning_starts=1000,
                            min_events=100),
        dist=DistConfig(num_workers=1, use_gpu=True),
    ),
    # a GPU cluster: BERT-base-sized encoder, a wider ranker, four DeepSpeed ZeRO-2 workers
    "large": TrainConfig(
        encoder=EncoderConfig(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072, max_len=256,
                              mlm_epochs=20, finetune_epochs=3, batch_size=64, lr=1e-4, finetune_lr=3e-5,
                              max_texts=5000000),
        ranker=RankerConfig(dim=256, layers=4, heads=8, epochs=200, batch_size=256, max_len=200, patience=20,
                            softmax="sampled"),
        policy=PolicyTrainConfig(simulator="large", max_iterations=500, time_budget_s=4 * 3600.0,
                                 hiddens=(512, 512), train_batch_size=512, rollout_fragment_length=64,
                                 epsilon_timesteps=200_000, learning_starts=10_000, target_update_freq=8000,
                                 buffer_capacity=500_000, num_env_runners=8, steps_per_iteration=4000,
                                 ppo_minibatch_size=512, checkpoint_every=10),
        simulator=SimulatorConfig(n_candidates=50, max_steps=30, slate_size=10),
        update=UpdateConfig(max_iterations=100, time_budget_s=3600.0, epsilon_timesteps=50_000,
                            learning_starts=5000, min_events=1000),
        dist=DistConfig(num_workers=4, use_gpu=True, deepspeed_config="zero2.json"),
    ),
}


def preset(name: str) -> TrainConfig:
    """The preset `name`, or ConfigError naming the known ones."""
    if name not in PRESETS:
        raise C.ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["ranker.epochs=3", "dist.num_workers=1"]`` -> ``{"ranker": {"epochs": "3"}, "dist": {...}}``."""
    out: dict[str, dict[str, str]] = {}
    for key, value in C.parse_overrides(items).items():
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise C.ConfigError(f"override {key}={value}: the key must be SECTION.KEY, e.g. ranker.epochs "
                                f"(sections: {', '.join(SECTIONS)})")
        out.setdefault(section, {})[name] = value
    return out


def in_section(section: str, items: list[str] | None) -> list[str]:
    """Overrides of one component's own command line (``KEY=VALUE``) as tree overrides (``SECTION.KEY=VALUE``);
    an item already naming a section is kept as it is."""
    return [item if "." in item.split("=", 1)[0] else f"{section}.{item}" for item in items or []]


def apply(cfg: TrainConfig, sections: dict[str, Any], where: str) -> TrainConfig:
    """`cfg` with each ``{section: {key: value}}`` applied to its section; unknown sections or keys raise."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise C.ConfigError(f"{where}: unknown section(s) {unknown}; known sections: {list(SECTIONS)}")
    changes = {}
    for name, values in sections.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise C.ConfigError(f"{where}: section {name!r} must be a mapping of keys to values")
        changes[name] = C.apply(getattr(cfg, name), values, f"{where}, section {name!r}")
    return dataclasses.replace(cfg, **changes)


def load(preset_name: str = "tiny", file: str | Path | None = None, overrides: list[str] | None = None
         ) -> TrainConfig:
    """The preset, then the file's sections, then ``section.key=value`` overrides."""
    cfg = preset(preset_name)
    if file:
        cfg = apply(cfg, C.load_file(file), f"config file {file}")
    if overrides:
        cfg = apply(cfg, parse_overrides(overrides), "override")
    return cfg
