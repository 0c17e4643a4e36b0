"""The bundle store: where finished bundles are published and where serving fetches them from.

A store location is a local path or any URI pyarrow's filesystems resolve (`file://`, `s3://`, `gs://`,
`hdfs://`, `abfs://`; credentials from the environment as the cloud SDKs read them). Training always builds a
bundle in a local staging directory (`cluster/pipeline.py`), then `publish` copies it to the location with the
manifest written LAST, after the previous manifest there was removed first: a reader that finds `manifest.json`
(serving's `check_bundle`, `fetch`) therefore always sees a whole one (`prefmine.bundle.is_published`; which parts
a finished bundle needs is `prefmine.bundle.is_complete`'s business), and one that finds none knows the
bundle is still being written (or a publish died half-way: publish again). On object stores each object write is
atomic, so the manifest appears whole or not at all; on local disks it is written to a temporary name and renamed.

`fetch` gives serving a local directory: a local location is used in place; a remote one is downloaded once per
bundle version into a cache. Either way the bundle is checked against its manifest first (prefmine.integrity:
every file's sha256, names and version sanitised, the HMAC signature when a key is configured). A download reads
the manifest once, takes only the files it lists (each name checked to stay inside the download folder), verifies
them, and only then moves the folder into the cache under a name built from the location and the checked version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from prefmine.bundle import MANIFEST, is_published
from prefmine.integrity import IntegrityConfig, IntegrityError, check_manifest, inside, safe_version, verify
from prefmine.storage import copy_file as _copy
from prefmine.storage import is_uri, resolve  # noqa: F401  (is_uri: callers import it from here)
from prefmine.storage import list_files as _files

CACHE_ENV = "PREFMINE_BUNDLE_CACHE"  # a node's own bundle cache folder (set in the environment of its `ray start`)


def default_cache_dir() -> str:
    """$PREFMINE_BUNDLE_CACHE, else ~/.cache/prefmine/bundles: read when a StoreConfig is made, so a Serve replica
    takes its node's setting."""
    return os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "prefmine" / "bundles")


@dataclass(frozen=True)
class StoreConfig:
    cache_dir: str = field(default_factory=default_cache_dir)  # fetched remote bundles, one folder per version
    chunk_bytes: int = 8 << 20
    # versions of one location kept in a node's cache: the newest fetched or used; older ones are removed when a
    # new one is installed (2: the version a rollout replaces stays while its replicas drain; 0: keep every one)
    keep_versions: int = 2


def read_manifest(location: str | Path) -> dict:
    fs, root = resolve(location)
    with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
        return json.loads(f.read().decode())


def publish(local_bundle: str | Path, location: str | Path, cfg: StoreConfig | None = None,
            on_file=None) -> dict:
    """Copy a finished local bundle to `location` (path or URI), manifest last. Returns what was written.

    `on_file(relative_path)` is called after each file is copied (progress; an exception there aborts the
    publish and leaves the location without a manifest)."""
    src = Path(local_bundle)
    if not (src / MANIFEST).is_file():
        raise FileNotFoundError(f"{src} is not a finished bundle (no {MANIFEST})")
    cfg = cfg or StoreConfig()
    dst_fs, root = resolve(location)
    if not is_uri(location) and Path(root) == src.resolve():
        return {"location": str(location), "files": 0, "bytes": 0, "in_place": True}
    dst_fs.create_dir(root, recursive=True)
    if dst_fs.get_file_info(f"{root}/{MANIFEST}").type == pafs.FileType.File:
        dst_fs.delete_file(f"{root}/{MANIFEST}")  # from here on readers see "being written"
    src_fs = pafs.LocalFileSystem()
    files = [f for f in _files(src_fs, str(src.resolve())) if f != MANIFEST]
    written = 0
    for rel in files:
        parent = os.path.dirname(rel)
        if parent:
            dst_fs.create_dir(f"{root}/{parent}", recursive=True)
        _copy(src_fs, str(src.resolve() / rel), dst_fs, f"{root}/{rel}", cfg.chunk_bytes)
        written += (src / rel).stat().st_size
        if on_file is not None:
            on_file(rel)
    manifest = (src / MANIFEST).read_bytes()
    if isinstance(dst_fs, pafs.LocalFileSystem):  # write + rename: never a half-written manifest on disk
        tmp = f"{root}/.{MANIFEST}.tmp"
        with dst_fs.open_output_stream(tmp) as f:
            f.write(manifest)
        os.replace(tmp, f"{root}/{MANIFEST}")
    else:
        with dst_fs.open_output_stream(f"{root}/{MANIFEST}") as f:
            f.write(manifest)
    return {"location": str(location), "files": len(files) + 1, "bytes": written + len(manifest), "in_place": False}


def cache_path(location: str | Path, version: str, cfg: StoreConfig | None = None) -> Path:
    """Where a remote bundle version is cached: cache_dir/<location as one plain name>-<hash>-<version>."""
    cache = Path((cfg or StoreConfig()).cache_dir).resolve()
    loc = str(location).split("://", 1)[-1].strip("/")
    slug = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", loc))[-80:].lstrip(".") or "bundle"
    digest = hashlib.sha256(str(location).encode()).hexdigest()[:8]
    dest = cache / f"{slug}-{digest}-{safe_version(version)}"
    if dest.parent != cache:  # cannot happen with the names above; checked because the path is then replaced
        raise IntegrityError(f"cache path {dest} is not directly inside {cache}")
    return dest


def check_published(location: str | Path, integrity: IntegrityConfig | None = None) -> dict:
    """The manifest at a remote `location`, checked without downloading the bundle: its version, file names and
    signature (prefmine.integrity.check_manifest), and every file it lists present there with the listed size
    (one listing; the contents are hashed where the bundle is fetched). Raises FileNotFoundError for a location
    without a manifest or missing a file, IntegrityError for a manifest or file that does not match."""
    integrity = integrity if integrity is not None else IntegrityConfig.from_env()
    if not is_published(location):
        raise FileNotFoundError(f"{location} holds no complete bundle ({MANIFEST} missing: not written yet, "
                                "or a publish did not finish)")
    _raw, manifest, files = _remote_manifest(location, integrity)
    fs, root = resolve(location)
    infos = fs.get_file_info([f"{root}/{rel}" for rel in sorted(files)])
    for rel, info in zip(sorted(files), infos):
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{location}: {rel} is listed in the manifest but missing")
        if info.size != files[rel]["bytes"]:
            raise IntegrityError(f"{location}: {rel} has {info.size} bytes, the manifest says {files[rel]['bytes']}")
    return manifest


def _remote_manifest(location: str | Path, integrity: IntegrityConfig) -> tuple[bytes, dict, dict]:
    """(raw bytes, manifest, checked file list) of the manifest at a remote location, read once."""
    src_fs, root = resolve(location)
    with src_fs.open_input_stream(f"{root}/{MANIFEST}") as f:
        raw = f.read()
    try:
        manifest = json.loads(raw.decode())
    except ValueError as e:
        raise IntegrityError(f"{location}: {MANIFEST} is not valid JSON: {e}") from e
    return raw, manifest, check_manifest(manifest, integrity, where=str(location))


def _cached(dest: Path, raw: bytes, integrity: IntegrityConfig) -> bool:
    """Whether `dest` holds a complete, verified copy of the version whose manifest is `raw`."""
    try:
        return (dest / MANIFEST).read_bytes() == raw and bool(verify(dest, integrity))
    except (OSError, IntegrityError):
        return False


def fetch(location: str | Path, cfg: StoreConfig | None = None, integrity: IntegrityConfig | None = None) -> Path:
    """A local directory holding the complete, verified bundle at `location` (downloaded once per version if
    remote). Raises IntegrityError naming the file or field that does not match its manifest.

    Several processes may fetch into one cache at once (the Serve replicas of a node): each downloads into a
    folder of its own (a unique ``.partial-`` name) and renames it into place; a complete copy already there
    wins and the later download is dropped, so no process ever removes a copy another one is reading (only a
    damaged one is moved aside, itself by a rename)."""
    cfg = cfg or StoreConfig()
    integrity = integrity if integrity is not None else IntegrityConfig.from_env()
    if not is_published(location):
        raise FileNotFoundError(f"{location} holds no complete bundle ({MANIFEST} missing: not written yet, "
                                "or a publish did not finish)")
    if not is_uri(location) or str(location).startswith("file://"):
        path = Path(resolve(location)[1])
        verify(path, integrity)
        return path
    raw, manifest, files = _remote_manifest(location, integrity)  # version, names, signature: before any write
    dest = cache_path(location, manifest["version"], cfg)
    if _cached(dest, raw, integrity):
        os.utime(dest)  # used now: the last to be evicted
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        download(location, tmp, cfg, files=sorted(files), manifest_bytes=raw)
        verify(tmp, integrity)
        _install(tmp, dest, raw, integrity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place
    os.utime(dest)
    evict_old_versions(location, dest, cfg)
    return dest


def evict_old_versions(location: str | Path, keep: Path, cfg: StoreConfig) -> list[str]:
    """Remove this location's cached versions beyond the `cfg.keep_versions` most recently fetched or used
    (`keep` always stays); the names removed. Each goes aside in one rename first, so a process checking the
    cache never sees half a copy; another location's versions are never touched (its name differs in the
    location's digest)."""
    if cfg.keep_versions <= 0:
        return []
    cache = Path(cfg.cache_dir).resolve()
    probe = cache_path(location, "v", cfg).name
    prefix = probe[:-len(safe_version("v"))]  # "<location slug>-<digest>-"
    ours = []
    for p in cache.iterdir():
        if p.is_dir() and p.name.startswith(prefix) and p != keep:
            try:
                ours.append((p.stat().st_mtime, p))
            except FileNotFoundError:
                continue  # evicted by another process just now
    removed = []
    for _, old in sorted(ours, reverse=True)[max(cfg.keep_versions - 1, 0):]:
        aside = Path(tempfile.mkdtemp(prefix=f".{old.name}.evicted-", dir=cache))
        try:
            os.replace(old, aside / "copy")
            removed.append(old.name)
        except FileNotFoundError:
            pass  # another process evicted it first
        shutil.rmtree(aside, ignore_errors=True)
    return removed


def _install(tmp: Path, dest: Path, raw: bytes, integrity: IntegrityConfig) -> None:
    """Rename the verified download `tmp` to `dest`, unless a complete copy is there by now (then it stays)."""
    for _ in range(3):
        try:
            os.rename(tmp, dest)  # atomic; fails while dest exists (a non-empty folder)
            return
        except OSError:
            if _cached(dest, raw, integrity):
                return  # another process got there first: theirs is used, this download dropped
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.damaged-", dir=dest.parent))
        try:
            os.replace(dest, aside / "copy")  # a damaged copy: out of the way in one rename, then removed
        except FileNotFoundError:
            pass  # someone else moved it first
        shutil.rmtree(aside, ignore_errors=True)
    raise IntegrityError(f"{dest}: could not install the downloaded bundle (the cached copy kept changing)")


def download(location: str | Path, local_dir: Path, cfg: StoreConfig | None = None, files: list[str] | None = None,
             manifest_bytes: bytes | None = None) -> None:
    """Download a remote bundle into `local_dir`, manifest last: `files` (names the manifest lists, default every
    file there), each refused if its name would land outside `local_dir`; `manifest_bytes` the manifest as
    already read (default: read it again)."""
    cfg = cfg or StoreConfig()
    src_fs, root = resolve(location)
    local_dir.mkdir(parents=True, exist_ok=True)
    if files is None:
        files = [f for f in _files(src_fs, root) if f != MANIFEST]
    for rel in files:
        dst = inside(local_dir, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _copy(src_fs, f"{root}/{rel}", pafs.LocalFileSystem(), str(dst), cfg.chunk_bytes)
    if manifest_bytes is None:
        _copy(src_fs, f"{root}/{MANIFEST}", pafs.LocalFileSystem(), str(local_dir / MANIFEST), cfg.chunk_bytes)
    else:
        (local_dir / MANIFEST).write_bytes(manifest_bytes)
