"""The source registry: every module of prefmine/data/sources is registered and satisfies `Source`, an unknown name
is refused naming the valid ones (library, prepare and CLI alike), and each source reads its real sample: the
files under $PREFMINE_DATA_DIR for amazon2018, movielens and seqrec, and for recbole and events (no published
sample there) real MovieLens ratings written in their layout and a `prefmine data synth` log."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import prefmine.data.sources as sources_pkg
from prefmine.data.prepare import prepare
from prefmine.data.privacy import Pseudonymiser
from prefmine.data.rows import BadRows, RawDataError
from prefmine.data.sources import SOURCES, Source, downloadable, get_source, names, read_rows

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_source_module():
    modules = {m.name for m in pkgutil.iter_modules(sources_pkg.__path__)}
    registered = {SOURCES[n].__name__.rsplit(".", 1)[1] for n in names()}
    assert registered == modules, "a module of prefmine/data/sources is not in SOURCES (or the other way)"
    assert names() == ["amazon2018", "movielens", "recbole", "events", "seqrec"]
    for name, source in SOURCES.items():
        assert isinstance(source, Source), f"{name} lacks a member of the Source protocol"
        assert source.NAME == name and source.LAYOUT
    assert downloadable() == ["amazon2018", "movielens"]


def test_unknown_source_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(RawDataError) as e:
        get_source("amazon")
    for n in names():
        assert n in str(e.value)
    with pytest.raises(RawDataError, match="amazon2018, movielens, recbole, events, seqrec"):
        prepare("nope", tmp_path, tmp_path / "out", pseudonymiser=Pseudonymiser(allow_demo=True))
    assert not (tmp_path / "out").exists()


def test_cli_choices_come_from_the_registry():
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "prepare", "--source", "nope", "--out", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "invalid choice: 'nope'" in r.stderr
    for n in names():
        assert repr(n) in r.stderr
    r = subprocess.run([sys.executable, "-m", "prefmine.cli", "data", "download", "--source", "seqrec", "--out", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'amazon2018', 'movielens'" in r.stderr


def _read(name: str, raw: Path, category: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    source = get_source(name)
    return read_rows(name, raw, category), source.catalogue(raw, category, BadRows("error"))


def test_amazon2018_reads_its_real_sample(raw_dir):
    inter, cat = _read("amazon2018", raw_dir / "amazon2018", "Gift_Cards")
    # ../shared/data/README.md: Gift_Cards 5-core, 2,972 reviews of 458 users and 148 items; 1,547 metadata rows
    assert len(inter) == 2972 and inter["user"].nunique() == 458 and inter["item"].nunique() == 148
    assert set(inter["event"]) == {"rate"} and inter["rating"].between(1, 5).all()
    assert len(cat) == 1547 and cat["item"].is_unique
    assert get_source("amazon2018").time_kind(get_source("amazon2018").plan(raw_dir / "amazon2018", "Gift_Cards")) \
        == "timestamps"


def test_movielens_reads_its_real_sample(raw_dir):
    inter, cat = _read("movielens", raw_dir / "movielens", None)
    # README: 100,836 ratings of 610 users over 9,724 movies
    assert len(inter) == 100_836 and inter["user"].nunique() == 610 and inter["item"].nunique() == 9724
    assert inter["rating"].between(0.5, 5).all()
    assert len(cat) == 9742 and cat["title"].str.len().gt(0).all()
    assert get_source("movielens").dataset_name(raw_dir / "movielens", None) == "ml-latest-small"


def test_seqrec_reads_its_real_sample(raw_dir):
    inter, cat = _read("seqrec", raw_dir / "seqrec", "Beauty")
    # seqrec/README.md: Beauty.txt, 22,363 users, 12,101 items, 198,502 interactions
    assert len(inter) == 198_502 and inter["user"].nunique() == 22_363 and inter["item"].nunique() == 12_101
    source = get_source("seqrec")
    assert source.time_kind(source.plan(raw_dir / "seqrec", "Beauty")) == "order-only"
    assert len(cat) > 0 and "attributes" in cat.columns


def test_recbole_reads_real_ratings_in_its_layout(raw_dir, tmp_path):
    ratings = pd.read_csv(raw_dir / "movielens" / "ml-latest-small" / "ratings.csv")
    (tmp_path / "ml").mkdir()
    with open(tmp_path / "ml" / "ml.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        ratings.to_csv(f, sep="\t", header=False, index=False)
    inter, _ = _read("recbole", tmp_path, None)
    assert len(inter) == len(ratings) == 100_836 and inter["user"].nunique() == 610
    source = get_source("recbole")
    assert source.dataset_name(tmp_path, None) == "ml"
    assert source.time_kind(source.plan(tmp_path, None)) == "timestamps"
    no_time = tmp_path / "nt"
    no_time.mkdir()
    with open(no_time / "nt.inter", "w") as f:  # without a timestamp column the file order is the time order
        f.write("user_id:token\titem_id:token\n")
        ratings[["userId", "movieId"]].head(500).to_csv(f, sep="\t", header=False, index=False)
    assert source.time_kind(source.plan(no_time, None)) == "order-only"


def test_events_reads_a_synth_log(tmp_path):
    from prefmine.data.synth.config import SynthConfig
    from prefmine.data.synth.generate import synth

    synth(tmp_path / "log", SynthConfig(users=200, items=50, events=3000, seed=1, fmt="csv"))
    inter, cat = _read("events", tmp_path / "log", None)
    assert len(inter) > 0 and inter["user"].nunique() <= 200 and inter["item"].nunique() <= 50
    assert set(inter["event"]) <= {"view", "click", "cart", "buy", "rate"}
    assert len(cat) == 50
