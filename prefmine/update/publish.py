"""Rolling a version in: the `current` symlink repointed atomically, the lineage in the manifest, the guard log."""

from __future__ import annotations

import json
import os
from pathlib import Path

CURRENT = "current"
GUARD_LOG = "guard_log.jsonl"


def current_version(bundles: str | Path) -> Path:
    """The version directory `bundles/current` points at (a FileNotFoundError names what is missing)."""
    link = Path(bundles) / CURRENT
    if not link.is_symlink() and not link.is_dir():
        raise FileNotFoundError(f"{link}: no current version (a symlink to a bundle version directory)")
    return link.resolve()


def point_current(bundles: str | Path, version_dir: str | Path) -> None:
    """Repoint `bundles/current` at version_dir: a new symlink renamed over the old one (atomic on POSIX), so a
    reader sees either version, never none. The link is relative when the version lies inside `bundles`."""
    bundles, version_dir = Path(bundles), Path(version_dir)
    target = version_dir.name if version_dir.parent.resolve() == bundles.resolve() else str(version_dir.resolve())
    tmp = bundles / f".{CURRENT}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, bundles / CURRENT)


def add_lineage(version_dir: str | Path, lineage: dict) -> dict:
    """Record the guard's figures and lineage in the version's manifest (components.update_loop) and reseal it."""
    from prefmine.bundle import read_manifest
    from prefmine.integrity import seal

    manifest = read_manifest(version_dir)
    manifest["update_loop"] = lineage
    return seal(version_dir, manifest)


def append_log(bundles: str | Path, record: dict) -> None:
    """One JSON line per round in bundles/guard_log.jsonl, flushed and fsynced."""
    with open(Path(bundles) / GUARD_LOG, "a") as f:
        f.write(json.dumps(record, default=str, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_log(bundles: str | Path) -> list[dict]:
    path = Path(bundles) / GUARD_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
