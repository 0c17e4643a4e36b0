"""One storage location for every artefact: a local path or a URI pyarrow's filesystems resolve.

A location is a local path or `scheme://authority/path[?options]` (`file://`, `s3://`, `gs://`, `hdfs://`,
`abfs://`; credentials from the environment as the cloud SDKs read them; pyarrow's query options such as
`endpoint_override=host:port&scheme=http` select an S3-compatible server other than AWS). Everything a run
writes for other nodes to read (Ray Train run storage and checkpoints, the encoder's weights, embeddings, the
bundle, reports) goes under one such location, so a node needs no disk shared with the driver.

`put_dir` copies a local directory to a location with its content index (`CONTENT`: each file's sha256 and size,
and one digest over them) written LAST, so a reader that finds the index sees a whole directory. `get_dir`
gives a local directory for a location: a local one is used in place; a remote one is downloaded once per node
into a cache folder named after the index's digest (the content, not the location: the same data under two
URIs is fetched once, and new data under an old URI is fetched again), each file checked against its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

CONTENT = ".prefmine-content.json"


@dataclass(frozen=True)
class StorageConfig:
    """Where a run keeps its artefacts (`uri`; empty: the run's local output directory) and where a node
    caches what it downloads from a remote location."""

    uri: str = ""
    cache_dir: str = str(Path.home() / ".cache" / "prefmine" / "storage")
    chunk_bytes: int = 8 << 20


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def _split(uri: str) -> tuple[str, str]:
    """(uri without its ?query, '?query' or '')."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def join(location: str | Path, *parts: str) -> str:
    """`location` with path parts appended (a URI keeps its ?options at the end)."""
    if not is_uri(location):
        return str(Path(location).joinpath(*parts))
    base, query = _split(str(location))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)]) + query


_FILESYSTEMS: dict[str, pafs.FileSystem] = {}  # one client per scheme://authority?options (cloud clients are costly)


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    uri = str(location)
    base, query = _split(uri)
    scheme, rest = base.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}{query}"  # the options choose the server: part of the key
    fs, path = pafs.FileSystem.from_uri(uri)
    return _FILESYSTEMS.setdefault(key, fs), path


def list_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """Paths of all files under root, relative to it, sorted."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root.rstrip("/")) + 1:] for i in infos if i.type == pafs.FileType.File)


def copy_file(src_fs, src: str, dst_fs, dst: str, chunk: int) -> None:
    with src_fs.open_input_stream(src) as fin, dst_fs.open_output_stream(dst) as fout:
        while True:
            block = fin.read(chunk)
            if not block:
                break
            fout.write(block)


def _sha256(path: Path, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _digest(files: dict[str, dict]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def put_dir(local: str | Path, location: str | Path, cfg: StorageConfig = StorageConfig()) -> dict:
    """Copy every file under the local directory to `location`, the content index last; return the index."""
    src = Path(local).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    dst_fs, root = resolve(location)
    dst_fs.create_dir(root, recursive=True)
    if dst_fs.get_file_info(f"{root}/{CONTENT}").type == pafs.FileType.File:
        dst_fs.delete_file(f"{root}/{CONTENT}")  # from here on readers see "being written"
    files: dict[str, dict] = {}
    local_fs = pafs.LocalFileSystem()
    for rel in list_files(local_fs, str(src)):
        if rel == CONTENT:
            continue
        parent = os.path.dirname(rel)
        if parent:
            dst_fs.create_dir(f"{root}/{parent}", recursive=True)
        copy_file(local_fs, str(src / rel), dst_fs, f"{root}/{rel}", cfg.chunk_bytes)
        files[rel] = {"sha256": _sha256(src / rel, cfg.chunk_bytes), "bytes": (src / rel).stat().st_size}
    index = {"digest": _digest(files), "files": files}
    raw = json.dumps(index, sort_keys=True).encode()
    if isinstance(dst_fs, pafs.LocalFileSystem):  # write + rename: never a half-written index on disk
        tmp = f"{root}/.{CONTENT}.tmp"
        with dst_fs.open_output_stream(tmp) as f:
            f.write(raw)
        os.replace(tmp, f"{root}/{CONTENT}")
    else:  # one object write is atomic
        with dst_fs.open_output_stream(f"{root}/{CONTENT}") as f:
            f.write(raw)
    return index


def read_index(location: str | Path) -> dict:
    """The content index `put_dir` wrote at `location`; FileNotFoundError if there is none (yet)."""
    fs, root = resolve(location)
    if fs.get_file_info(f"{root}/{CONTENT}").type != pafs.FileType.File:
        raise FileNotFoundError(f"{location} holds no complete directory ({CONTENT} missing: not written yet, "
                                "or a put_dir did not finish)")
    with fs.open_input_stream(f"{root}/{CONTENT}") as f:
        index = json.loads(f.read().decode())
    if not isinstance(index, dict) or not isinstance(index.get("files"), dict) or \
            index.get("digest") != _digest(index["files"]):
        raise ValueError(f"{location}: {CONTENT} is malformed or its digest does not match its file list")
    return index


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if root not in path.parents:
        raise ValueError(f"{rel!r} in a content index leaves the download folder")
    return path


def get_dir(location: str | Path, cfg: StorageConfig = StorageConfig()) -> Path:
    """A local directory holding what `put_dir` wrote at `location` (downloaded once per node and content if
    remote, each file checked against the index's sha256)."""
    if not is_uri(location) or str(location).startswith("file://"):
        path = Path(resolve(location)[1])
        read_index(path)  # a local directory too must be complete
        return path
    index = read_index(location)
    cache = Path(cfg.cache_dir).resolve()
    dest = cache / index["digest"]
    if (dest / CONTENT).is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    src_fs, root = resolve(location)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        for rel, meta in index["files"].items():
            target = _inside(tmp, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(src_fs, f"{root}/{rel}", pafs.LocalFileSystem(), str(target), cfg.chunk_bytes)
            if _sha256(target, cfg.chunk_bytes) != meta["sha256"]:
                raise ValueError(f"{location}/{rel}: sha256 does not match the content index")
        (tmp / CONTENT).write_text(json.dumps(index, sort_keys=True))
        try:
            os.replace(tmp, dest)  # another process may have finished the same content first: keep theirs
        except OSError:
            if not (dest / CONTENT).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
