"""Config presets, file sections and overrides: unknown keys are errors that name the key."""

from __future__ import annotations

import pytest

from prefmine import config as C
from prefmine.ranker.model import PRESETS as RANKER_PRESETS
from prefmine.text.encoder import PRESETS as ENCODER_PRESETS


def test_presets_file_then_overrides():
    cfg = C.resolve(RANKER_PRESETS, "tiny", {"dim": 32, "fusion": "none"}, {"epochs": "3"})
    assert (cfg.dim, cfg.fusion, cfg.epochs) == (32, "none", 3)
    assert C.resolve(ENCODER_PRESETS, "base").hidden > C.resolve(ENCODER_PRESETS, "tiny").hidden


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    with pytest.raises(C.ConfigError, match="dimm"):
        C.resolve(RANKER_PRESETS, "tiny", {"dimm": 3})
    with pytest.raises(C.ConfigError, match="'epochs'.*integer"):
        C.resolve(RANKER_PRESETS, "tiny", None, {"epochs": "many"})
    with pytest.raises(C.ConfigError, match="preset"):
        C.resolve(RANKER_PRESETS, "huge")
    with pytest.raises(C.ConfigError, match="key=value"):
        C.parse_overrides(["epochs"])
    bad = tmp_path / "c.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(C.ConfigError, match="mapping"):
        C.load_file(bad)
