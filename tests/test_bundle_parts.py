"""The bundle's one owner (prefmine/bundle.py): which parts a finished bundle needs, published vs complete on a
local path and behind a URI, and each component's save/load pair writing what the other reads back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from prefmine import store
from prefmine.bundle import (
    MANIFEST,
    PARTS,
    REQUIRED_PARTS,
    Bundle,
    Catalog,
    is_complete,
    is_published,
    load_catalog,
    missing_parts,
    save_catalog,
    write_catalog,
)
from prefmine.integrity import seal


def test_required_parts_are_the_ones_serving_cannot_do_without():
    assert REQUIRED_PARTS == ("manifest.json", "catalog", "encoder", "ranker")
    assert {p.name for p in PARTS if not p.required} == {"ranker_id_only", "policy", "ads", "reports", ".train"}


def test_published_and_complete_grow_part_by_part(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    assert missing_parts(b) == list(REQUIRED_PARTS) and not is_published(b) and not is_complete(b)
    for part in ("catalog", "encoder"):
        (b / part).mkdir()
        (b / part / "x.bin").write_bytes(b"x")
    seal(b, {"format": "prefmine-bundle/2", "version": "v1"})
    assert is_published(b) and not is_complete(b) and missing_parts(b) == ["ranker"]  # an encoder-only stage
    (b / "ranker").mkdir()
    (b / "ranker" / "model.pt").write_bytes(b"w")
    assert not missing_parts(b) and is_complete(b)
    (b / MANIFEST).unlink()  # a publish in progress: the manifest goes first and comes back last
    assert missing_parts(b) == [MANIFEST] and not is_complete(b)


def test_the_same_answers_behind_a_uri(tmp_path):
    b = tmp_path / "b"
    for part in ("catalog", "ranker"):
        (b / part).mkdir(parents=True)
        (b / part / "x.bin").write_bytes(b"x")
    seal(b, {"format": "prefmine-bundle/2", "version": "v1"})
    uri = "mock:///bucket/parts/v1"
    store.publish(b, uri)
    assert is_published(uri) and missing_parts(uri) == ["encoder"] and not is_complete(uri)
    assert is_published(f"file://{b}") and missing_parts(f"file://{b}") == ["encoder"]


def test_catalog_round_trip_and_the_bundle_reads_it(magazine5, tmp_path):
    from prefmine.data.dataset import load_dataset

    ds = load_dataset(magazine5)
    b = tmp_path / "b"
    write_catalog(b, ds)
    cat = load_catalog(b)
    assert list(cat.items["item"]) == list(ds.item_ids)
    assert list(cat.histories) == list(ds.users)
    for u, s in zip(ds.users[:50], ds.full_sequences()[:50]):
        np.testing.assert_array_equal(cat.histories[u], s)
    # beside the items, what the ranker reads: each event's type and time (train, then valid and test)
    for n, u in enumerate(ds.users[:50]):
        np.testing.assert_array_equal(cat.events[u], ds.full_events()[n])
        np.testing.assert_array_equal(cat.times[u], ds.full_times()[n])
        assert len(cat.times[u]) == len(cat.histories[u]) and np.all(np.diff(cat.times[u]) >= 0)
    seal(b, {"format": "prefmine-bundle/2", "version": "v0"})
    items, events, times = Bundle.load(b, key=b"prefmine-test-key").history_inputs(ds.users[0])
    np.testing.assert_array_equal(events, ds.full_events()[0])
    np.testing.assert_array_equal(times, ds.full_times()[0])
    with pytest.raises(ValueError, match="events"):  # misaligned events are refused, naming the user
        save_catalog(tmp_path / "bad", Catalog(cat.items, {"u": [1, 2]}, cat.popularity, {"u": [4]}, None))
    np.testing.assert_array_equal(cat.popularity, ds.popularity())
    # an update rewrites it: one user gains an item, a new user appears, the rest stays as it was
    first = ds.users[0]
    hist = {u: list(h) for u, h in cat.histories.items()}
    hist[first].append(3)
    hist["new-user"] = [1, 2]
    save_catalog(b, Catalog(cat.items, hist, cat.popularity + 1.0))
    again = load_catalog(b)
    assert list(again.histories[first]) == hist[first] and list(again.histories["new-user"]) == [1, 2]
    pd.testing.assert_frame_equal(again.items, cat.items)
    seal(b, {"format": "prefmine-bundle/2", "version": "v1"})
    bundle = Bundle.load(b, key=b"prefmine-test-key")
    assert bundle.n_items == ds.n_items and list(bundle.history("new-user")) == [1, 2]
    # rewritten from item lists alone (cluster/update_policy): no events or times, which serving reads as `rate`
    # at unknown gaps
    assert again.events is None and again.times is None
    assert bundle.history_inputs("new-user")[1:] == (None, None)


def test_ranker_save_load_pair(tmp_path):
    from prefmine.ranker.model import FusedRanker, RankerConfig
    from prefmine.ranker.runtime import load_ranker, save_ranker

    torch.manual_seed(0)
    cfg = RankerConfig(dim=32, layers=1, heads=2, fusion="gate", max_len=12)
    text = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    model = FusedRanker(cfg, 50, text)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    d = save_ranker(tmp_path / "ranker", tmp_path / "state.pt", cfg, 50, text)
    back = load_ranker(d)
    assert back.cfg == cfg and not back.training
    np.testing.assert_array_equal(np.load(d / "text_embeddings.npy"), text)
    with torch.no_grad():
        np.testing.assert_allclose(back.item_vectors().numpy(), model.eval().item_vectors().numpy())
    id_cfg = dataclasses.replace(cfg, fusion="none")
    torch.save(FusedRanker(id_cfg, 50).state_dict(), tmp_path / "id_state.pt")
    id_only = save_ranker(tmp_path / "id_only", tmp_path / "id_state.pt", id_cfg, 50)
    assert not (id_only / "text_embeddings.npy").exists() and load_ranker(id_only).cfg.fusion == "none"


def test_encoder_save_load_pair(tmp_path, tiny_bert_dir):
    from transformers import BertModel

    from prefmine.text.runtime import load_encoder, save_encoder
    from prefmine.train_config import PRESETS

    src = tiny_bert_dir(tmp_path / "src", ["a red magazine about boats", "a blue magazine about trains"])
    bert = BertModel.from_pretrained(str(src), add_pooling_layer=False)
    cfg = dataclasses.replace(PRESETS["tiny"].encoder, max_len=24)
    d = save_encoder(tmp_path / "encoder", bert, cfg)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            (d / name).write_bytes((src / name).read_bytes())
    tokenizer, back = load_encoder(d)
    ids = tokenizer(["a red magazine"], return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(back(**ids).last_hidden_state.numpy(),
                                   bert.eval()(**ids).last_hidden_state.numpy(), atol=1e-6)
    meta = json.loads((d / "encoder_config.json").read_text())
    assert meta["max_len"] == 24 and meta["vocab_size"] == bert.config.vocab_size


@pytest.mark.parametrize("part", ["catalog", "encoder", "ranker"])
def test_a_missing_required_part_is_named(tmp_path, part):
    b = tmp_path / "b"
    for p in REQUIRED_PARTS[1:]:
        (b / p).mkdir(parents=True)
        (b / p / "f").write_bytes(b"f")
    seal(b, {"format": "prefmine-bundle/2", "version": "v1"})
    (b / part / "f").unlink()
    (b / part).rmdir()
    assert missing_parts(b) == [part]


def test_drop_checkpoints_keeps_each_runs_logs_and_a_list_of_what_it_removed(tmp_path):
    from prefmine.bundle import drop_checkpoints

    run = tmp_path / ".train" / "ranker-1"
    for ckpt, size in (("checkpoint_000000", 100), ("checkpoint_000001", 250)):
        (run / ckpt / "model").mkdir(parents=True)
        (run / ckpt / "model" / "state.pt").write_bytes(b"w" * size)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    (tmp_path / ".train" / "logs-only").mkdir()  # a run without checkpoints is left as it is
    assert drop_checkpoints(tmp_path) == 350
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.json", "metrics.jsonl"]
    listed = json.loads((run / "checkpoint.json").read_text())
    assert listed["dropped_from_bundle"] is True
    assert listed["files"] == {"checkpoint_000000/model/state.pt": 100, "checkpoint_000001/model/state.pt": 250}
    assert drop_checkpoints(tmp_path) == 0  # nothing left to drop
