"""The one config of the search component."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from prefmine.config import ConfigError

FUSIONS = ("linear", "rrf")
LEXICAL_FIELDS = ("title", "brand", "categories", "description")
DEFAULT_LEXICAL_FIELDS = ("title", "brand", "categories")
CONFIG_FILE = "search_config.json"


@dataclass(frozen=True)
class SearchConfig:
    """How Search retrieves, fuses and personalises.

    `candidates`: items taken from each retriever (after filters) into the pool that is fused, personalised and
    faceted. `fusion`: "linear" mixes min-max-normalised lexical and dense scores with `lexical_weight`; "rrf" is
    reciprocal-rank fusion with constant `rrf_k` (the same weight gives the lexical list's share). `personal_weight`:
    share of the ranker's (normalised) scores in the final score when the user has a history. The two weights are
    meant to be chosen on validation queries (`prefmine.search.tune.choose_weights`), not set by hand; the defaults
    are a neutral start. `facet_limit`: values reported per facet, most frequent first. `lexical_fields`: the
    catalogue fields BM25 indexes (a subset of LEXICAL_FIELDS, in that order; the description is left out by default,
    and meant to be added when validation queries say so, e.g. where titles name nothing)."""

    candidates: int = 200
    fusion: str = "linear"
    lexical_weight: float = 0.5
    rrf_k: int = 60
    personal_weight: float = 0.0
    facet_limit: int = 20
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    lexical_fields: tuple[str, ...] = DEFAULT_LEXICAL_FIELDS

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion: {self.fusion!r} is not one of {FUSIONS}")
        for name in ("lexical_weight", "personal_weight"):
            w = getattr(self, name)
            if not 0.0 <= w <= 1.0:
                raise ConfigError(f"{name}: {w} is outside [0, 1]")
        for name in ("candidates", "rrf_k", "facet_limit"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        given = tuple(self.lexical_fields)
        if not given or not set(given) <= set(LEXICAL_FIELDS):
            raise ConfigError(f"lexical_fields: {list(given)} must be a non-empty subset of {list(LEXICAL_FIELDS)}")
        object.__setattr__(self, "lexical_fields", tuple(f for f in LEXICAL_FIELDS if f in given))

    def save(self, d: Path) -> None:
        (Path(d) / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, d: Path) -> SearchConfig:
        """The config saved in `d`, or the defaults when none was saved; unknown keys are ignored."""
        path = Path(d) / CONFIG_FILE
        if not path.is_file():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})
