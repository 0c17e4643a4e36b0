"""Model bundles: one versioned directory holding everything serving and evaluation need.

Layout: manifest.json (version, data hash, dataset manifest, per-component configs and metrics, and every file's
sha256 with an optional HMAC signature, see prefmine.integrity; written last and atomically, so a half-written
bundle is never taken for a finished one), catalog/ (items and user histories), encoder/ (Hugging Face BERT +
tokenizer + item_embeddings.npy), ranker/ and ranker_id_only/ (weights + config), policy/ (the policy network as
safetensors + JSON, see prefmine.policy.network, and its config).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefmine.data.privacy import DEMO_FINGERPRINT, Pseudonymiser, load_key

MANIFEST = "manifest.json"


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


def write_catalog(bundle: Path, dataset) -> None:
    """Items and every known user's full history (pseudonyms only), for serving."""
    cat = Path(bundle) / "catalog"
    cat.mkdir(parents=True, exist_ok=True)
    dataset.items[["item", "title", "brand", "categories"]].to_parquet(cat / "items.parquet", index=False)
    seqs = dataset.full_sequences()
    pd.DataFrame({"user": dataset.users, "items": [s.tolist() for s in seqs]}).to_parquet(
        cat / "histories.parquet", index=False)
    np.save(cat / "popularity.npy", dataset.popularity())


class Bundle:
    """Read side of a bundle: catalogue, user histories, pseudonymisation, manifest."""

    def __init__(self, path: Path, manifest: dict, items: pd.DataFrame, histories: dict, popularity: np.ndarray,
                 key: bytes | None = None):
        self.path, self.manifest = Path(path), manifest
        self.items = items
        self.item_ids = items["item"].to_numpy().astype(str)
        self.titles = items["title"].fillna("").to_numpy().astype(str)
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        self._histories = histories
        self.popularity = popularity
        expected = manifest.get("dataset", {}).get("pseudonymisation", {}).get("key_fingerprint")
        self._pseudo = Pseudonymiser(key if key is not None else load_key(allow_demo=expected == DEMO_FINGERPRINT))
        self.key_matches = expected is None or expected == self._pseudo.fingerprint

    @classmethod
    def load(cls, path: str | Path, key: bytes | None = None) -> Bundle:
        path = Path(path)
        manifest = read_manifest(path)
        items = pd.read_parquet(path / "catalog" / "items.parquet")
        hist = pd.read_parquet(path / "catalog" / "histories.parquet")
        histories = {u: np.asarray(s, dtype=np.int64) for u, s in zip(hist["user"], hist["items"])}
        return cls(path, manifest, items, histories, np.load(path / "catalog" / "popularity.npy"), key)

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
