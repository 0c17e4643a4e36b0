"""Model bundles: one versioned directory holding everything serving and evaluation need. This module owns the
bundle: its parts (`PARTS`, which of them a finished bundle needs: `REQUIRED_PARTS`), when a bundle counts as
published (`is_published`) and as complete (`is_complete`), the manifest, and the catalogue's save/load pair.

Each part's files are written and read by one save/load pair beside its model, in the manner of Hugging Face's
`save_pretrained` / `from_pretrained`:

    manifest.json     version, data hash, dataset manifest, per-component configs and metrics, and every file's
                      sha256 with an optional HMAC signature (prefmine.integrity); written last and atomically
    catalog/          items, every user's history (items, event types, times), popularity: `save_catalog` /
                      `load_catalog` (here)
    encoder/          Hugging Face BERT + tokenizer + item and user text embeddings:
                      `prefmine.text.runtime.save_encoder` / `load_encoder`, `EncoderRuntime`
    ranker/           the fused ranker (weights + config, its blend and retrieval index):
                      `prefmine.ranker.runtime.save_ranker` / `load_ranker`, `RankerRuntime`
    ranker_id_only/   the ID-only ranker, the same pair (optional: evaluation's baseline)
    policy/           the policy network as safetensors + JSON and its config:
                      `prefmine.policy.runtime.save_policy` / `PolicyRuntime` (optional: serving falls back to
                      the ranker's order without it)
    ads/              the ranker's click-probability calibration, JSON + .npz:
                      `prefmine.ads.bundle_calibration` (optional: Rank's auction uses raw probabilities without it)
    reports/          evaluation reports (optional, written after the manifest was sealed)
    .train/           the training runs' logs (optional)

A bundle is *published* once its manifest exists: the manifest is written last (prefmine.store.publish), so its
presence means every file it lists was written; a bundle trained stage by stage is published after each stage.
It is *complete* (servable) when it is published and holds every required part.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.privacy import DEMO_FINGERPRINT, Pseudonymiser, load_key

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Part:
    """One top-level entry of a bundle: its name, whether a finished bundle must hold it, what it holds."""

    name: str
    required: bool
    holds: str


PARTS = (
    Part(MANIFEST, True, "versions, configs, metrics, every file's sha256"),
    Part("catalog", True, "items, user histories, popularity"),
    Part("encoder", True, "text encoder, tokenizer, text embeddings"),
    Part("ranker", True, "fused sequential ranker"),
    Part("ranker_id_only", False, "ID-only ranker (evaluation baseline)"),
    Part("policy", False, "policy network (serving is greedy without it)"),
    Part("ads", False, "click-probability calibration of Rank's ad auction (JSON + .npz)"),
    Part("reports", False, "evaluation reports"),
    Part(".train", False, "training runs' logs"),
)
REQUIRED_PARTS = tuple(p.name for p in PARTS if p.required)


def is_published(location: str | Path) -> bool:
    """Whether `location` (path or URI) holds a manifest: the publish writes it last, so the files it lists are
    there. A bundle trained stage by stage is published, though not yet complete, after each stage."""
    return not _absent(location, (MANIFEST,))


def missing_parts(location: str | Path) -> list[str]:
    """The required parts `location` (path or URI) lacks, in `PARTS` order; empty for a complete bundle."""
    return _absent(location, REQUIRED_PARTS)


def is_complete(location: str | Path) -> bool:
    """Whether `location` holds a finished bundle: published, with every required part (what serving needs)."""
    return not missing_parts(location)


def _absent(location: str | Path, names) -> list[str]:
    from prefmine import store  # store imports this module

    if not store.is_uri(location):
        return [n for n in names if not (Path(location) / n).exists()]
    import pyarrow.fs as pafs

    fs, root = store.resolve(location)
    infos = fs.get_file_info([f"{root}/{n}" for n in names])
    return [n for n, i in zip(names, infos) if i.type == pafs.FileType.NotFound]


def new_version(data_hash: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{data_hash[:6]}"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{path} is not a finished bundle (no {MANIFEST})")
    return json.loads(p.read_text())


def update_manifest(bundle: Path, **fields) -> dict:
    """Merge `fields` into the manifest (components and metrics merged key by key) and write it atomically."""
    bundle = Path(bundle)
    try:
        manifest = read_manifest(bundle)
    except FileNotFoundError:
        manifest = {}
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(manifest.get(k), dict):
            manifest[k] = {**manifest[k], **v}
        else:
            manifest[k] = v
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


CATALOG_COLUMNS = ["item", "title", "brand", "categories"]
# kept where the dataset has them: what request-time rules filter on (price, stock, kind) and content's date
CATALOG_OPTIONAL = ["price", "available", "kind", "published"]


@dataclass
class Catalog:
    """The catalogue part: items (CATALOG_COLUMNS, in item-index order), each user's history as item indices
    keyed by pseudonym, and each item's popularity count. ``events`` (EVENTS indices) and ``times`` (unix
    seconds), keyed like ``histories`` and aligned with them, are what the ranker reads beside the items, so
    serving feeds it what training and evaluation do; None where a catalogue does not hold them (bundles written
    before they were stored, or rewritten from item lists alone): serving then uses `rate` and unknown gaps."""

    items: pd.DataFrame
    histories: dict
    popularity: np.ndarray
    events: dict | None = None
    times: dict | None = None


def save_catalog(bundle: Path, catalog: Catalog) -> None:
    """Write `bundle/catalog/` (items.parquet, histories.parquet, popularity.npy), replacing what is there."""
    cat = Path(bundle) / "catalog"
    cat.mkdir(parents=True, exist_ok=True)
    columns = CATALOG_COLUMNS + [c for c in CATALOG_OPTIONAL if c in catalog.items.columns]
    catalog.items[columns].to_parquet(cat / "items.parquet", index=False)
    users = list(catalog.histories)
    table = {"user": users, "items": [[int(i) for i in h] for h in catalog.histories.values()]}
    for name, per_user in (("events", catalog.events), ("times", catalog.times)):
        if per_user is not None:
            table[name] = [[int(x) for x in per_user[u]] for u in users]
            bad = next((u for u, h, x in zip(users, table["items"], table[name]) if len(h) != len(x)), None)
            if bad is not None:
                raise ValueError(f"catalog {name} of user {bad!r}: {len(catalog.histories[bad])} items but "
                                 f"{len(per_user[bad])} {name}")
    pd.DataFrame(table).to_parquet(cat / "histories.parquet", index=False)
    np.save(cat / "popularity.npy", catalog.popularity)


def load_catalog(bundle: str | Path) -> Catalog:
    """The catalogue `save_catalog` wrote; histories (and their events and times, where stored) as int64 arrays."""
    cat = Path(bundle) / "catalog"
    items = pd.read_parquet(cat / "items.parquet")
    hist = pd.read_parquet(cat / "histories.parquet")

    def column(name: str) -> dict | None:
        if name not in hist.columns:
            return None
        return {u: np.asarray(s, dtype=np.int64) for u, s in zip(hist["user"], hist[name])}

    return Catalog(items, column("items"), np.load(cat / "popularity.npy"), column("events"), column("times"))


def write_catalog(bundle: Path, dataset) -> None:
    """Items and every known user's full history (pseudonyms only) with its event types and times, for serving."""
    save_catalog(bundle, Catalog(dataset.items, dict(zip(dataset.users, dataset.full_sequences())),
                                 dataset.popularity(), dict(zip(dataset.users, dataset.full_events())),
                                 dict(zip(dataset.users, dataset.full_times()))))


class Bundle:
    """Read side of a bundle: catalogue, user histories, pseudonymisation, manifest."""

    def __init__(self, path: Path, manifest: dict, items: pd.DataFrame, histories: dict, popularity: np.ndarray,
                 key: bytes | None = None, events: dict | None = None, times: dict | None = None):
        self.path, self.manifest = Path(path), manifest
        self.items = items
        self.item_ids = items["item"].to_numpy().astype(str)
        self.titles = items["title"].fillna("").to_numpy().astype(str)
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        self._histories = histories
        self._events, self._times = events, times
        self.popularity = popularity
        expected = manifest.get("dataset", {}).get("pseudonymisation", {}).get("key_fingerprint")
        self._pseudo = Pseudonymiser(key if key is not None else load_key(allow_demo=expected == DEMO_FINGERPRINT))
        self.key_matches = expected is None or expected == self._pseudo.fingerprint

    @classmethod
    def load(cls, path: str | Path, key: bytes | None = None) -> Bundle:
        path = Path(path)
        manifest = read_manifest(path)
        catalog = load_catalog(path)
        return cls(path, manifest, catalog.items, catalog.histories, catalog.popularity, key, catalog.events,
                   catalog.times)

    @property
    def version(self) -> str:
        return self.manifest.get("version", "unknown")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_index(self, raw_id: str) -> int | None:
        return self._item_index.get(raw_id)

    def pseudonymise(self, raw_user_id: str) -> str:
        return self._pseudo(raw_user_id)

    def history(self, pseudonym: str) -> np.ndarray:
        return self._histories.get(pseudonym, np.zeros(0, dtype=np.int64))

    def history_inputs(self, pseudonym: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(items, event types, times) of the user's stored history; events or times None where the catalogue
        does not hold them."""
        items = self.history(pseudonym)
        empty = np.zeros(0, dtype=np.int64)
        events = None if self._events is None else self._events.get(pseudonym, empty)
        times = None if self._times is None else self._times.get(pseudonym, empty)
        return items, events, times


def drop_checkpoints(bundle: Path) -> int:
    """Remove the Ray Train checkpoints under `bundle/.train` before the bundle is published; the bytes removed.

    A bundle is what serving and evaluation read, plus each run's logs (metrics.jsonl, tensorboard): the
    checkpoints' DeepSpeed model and optimizer states are most of its bytes (19 of 21 MB for the tiny preset) and
    every replica that fetches the bundle would copy them. Each run keeps `checkpoint.json`, which lists the files
    its last checkpoint held and their sizes. `prefmine train --keep-checkpoints` keeps them (to go on training
    from them)."""
    dropped = 0
    for run in sorted(p for p in (bundle / ".train").glob("*") if p.is_dir()):
        ckpts = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
        if not ckpts:
            continue
        files = {str(f.relative_to(run)): f.stat().st_size for c in ckpts for f in sorted(c.rglob("*")) if f.is_file()}
        (run / "checkpoint.json").write_text(json.dumps({"dropped_from_bundle": True, "files": files}, indent=1))
        for c in ckpts:
            shutil.rmtree(c)
        (run / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)  # it names the removed checkpoints
        dropped += sum(files.values())
    return dropped
