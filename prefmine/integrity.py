"""Bundle integrity: the manifest lists every file's sha256, names taken from a manifest are sanitised, and an
optional HMAC signature binds the version and the file list to a key the server holds.

A bundle is sealed once it is complete (`seal`, called by the training pipeline and the policy update job before
publishing): the manifest gets ``files`` = {relative path: {"sha256", "bytes"}} for every file of the bundle
except the manifest itself and ``reports/`` (evaluation writes its reports into the bundle after publication),
and, when a signing key is configured, ``signature`` = HMAC-SHA256 over the canonical JSON of the bundle
version and that file list. The signature does not cover the manifest's descriptive fields (metrics, erasure
notes), which are updated after publication; everything that is loaded is covered through its digest.

`verify` (fetch and every serving load) refuses, naming the file: a listed file that is missing, of another
size or another sha256; a file in the bundle that the manifest does not list; a name that is absolute, has
``..`` or a backslash, or resolves outside the bundle (a symlink); a version that is not a plain name; and,
when a key is configured (`IntegrityConfig.from_env`: ``PREFMINE_BUNDLE_KEY_FILE`` or ``PREFMINE_BUNDLE_KEY``),
an unsigned or wrongly signed bundle. A bundle written before sealing existed lists no files and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

FILES_FORMAT = "prefmine-files/1"
SIGNATURE_ALGORITHM = "hmac-sha256"
UNSEALED_DIRS = ("reports",)  # written into a published bundle later (prefmine evaluate); never loaded to serve
KEY_ENV, KEY_FILE_ENV = "PREFMINE_BUNDLE_KEY", "PREFMINE_BUNDLE_KEY_FILE"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A bundle that is not exactly what its manifest says (or is not signed by the configured key)."""


@dataclass(frozen=True)
class IntegrityConfig:
    """The HMAC key bundles must be signed with; None: signatures are not required (digests always are)."""

    key: bytes | None = None

    @classmethod
    def from_env(cls) -> IntegrityConfig:
        """The key from ``PREFMINE_BUNDLE_KEY_FILE`` (a file holding it) or ``PREFMINE_BUNDLE_KEY``."""
        path = os.environ.get(KEY_FILE_ENV)
        if path:
            try:
                key = Path(path).read_bytes().strip()
            except OSError as e:
                raise IntegrityError(f"{KEY_FILE_ENV}: cannot read {path}: {e}") from e
        else:
            key = os.environ.get(KEY_ENV, "").encode()
        if key and len(key) < 16:
            raise IntegrityError(f"{KEY_FILE_ENV if path else KEY_ENV}: the bundle signing key has {len(key)} "
                                 "bytes; use at least 16")
        return cls(key=key or None)


def safe_version(version) -> str:
    """The manifest's version if it is a plain name (it becomes a directory name: no '/', no '..')."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or ".." in version:
        raise IntegrityError(f"manifest field 'version': {version!r} is not a plain name "
                             "(letters, digits, '.', '_', '+', '-'; no path separators or '..')")
    return version


def safe_relpath(name) -> str:
    """A file name from a manifest, as a relative POSIX path that stays inside the bundle."""
    bad = (not isinstance(name, str) or not name or name.startswith("/") or "\\" in name
           or any(ord(c) < 32 for c in name) or re.match(r"^[A-Za-z]:", name) is not None)
    if not bad:
        parts = name.split("/")
        bad = any(p in ("", ".", "..") for p in parts)
    if bad:
        raise IntegrityError(f"manifest field 'files': {name!r} is not a relative path inside the bundle")
    return name


def inside(root: Path, rel: str) -> Path:
    """root/rel, refused if it resolves (through symlinks) outside root."""
    root = Path(root).resolve()
    path = (root / safe_relpath(rel)).resolve()
    if path != root and root not in path.parents:
        raise IntegrityError(f"{rel}: resolves to {path}, outside the bundle {root}")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _sealed(rel: str) -> bool:
    return rel.split("/", 1)[0] not in UNSEALED_DIRS


def bundle_files(bundle: Path) -> list[str]:
    """Relative paths of the bundle's sealed files (all but the manifest and reports/), sorted."""
    from prefmine.bundle import MANIFEST

    root = Path(bundle)
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST and _sealed(rel):
                out.append(rel)
    return sorted(out)


def digest_files(bundle: Path) -> dict:
    """{relative path: {"sha256", "bytes"}} of every sealed file."""
    root = Path(bundle)
    return {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in bundle_files(root)}


def signed_bytes(manifest: dict) -> bytes:
    """What the signature covers: the version and the file list, as canonical JSON."""
    view = {"format": FILES_FORMAT, "version": manifest.get("version"), "files": manifest.get("files")}
    return json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"prefmine-bundle-key\0" + key).hexdigest()[:16]


def signature(manifest: dict, key: bytes) -> dict:
    return {"algorithm": SIGNATURE_ALGORITHM, "key_fingerprint": key_fingerprint(key),
            "value": hmac.new(key, signed_bytes(manifest), hashlib.sha256).hexdigest()}


def seal(bundle: str | Path, manifest: dict | None = None, cfg: IntegrityConfig | None = None) -> dict:
    """List every file's digest in the manifest (`manifest`, or the bundle's own), sign it when a key is
    configured, and write it atomically as the bundle's manifest. Returns the manifest written."""
    from prefmine.bundle import MANIFEST, read_manifest, write_json_atomic

    bundle = Path(bundle)
    cfg = cfg if cfg is not None else IntegrityConfig.from_env()
    manifest = dict(manifest if manifest is not None else read_manifest(bundle))
    safe_version(manifest.get("version"))
    manifest.pop("signature", None)
    manifest["files_format"] = FILES_FORMAT
    manifest["files"] = digest_files(bundle)
    if cfg.key is not None:
        manifest["signature"] = signature(manifest, cfg.key)
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


def check_manifest(manifest: dict, cfg: IntegrityConfig | None = None, where: str = "bundle") -> dict:
    """Validate what a manifest says before anything is read by it: a plain version, safe file names with
    well-formed digests, and the signature when a key is configured. Returns the file list."""
    cfg = cfg if cfg is not None else IntegrityConfig.from_env()
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{where}: the manifest is not a JSON object")
    safe_version(manifest.get("version"))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{where}: the manifest lists no file digests (field 'files'): a bundle written "
                             "before bundles were sealed, or not by prefmine; retrain it")
    for rel, entry in files.items():
        safe_relpath(rel)
        if rel.split("/", 1)[0] in UNSEALED_DIRS:
            raise IntegrityError(f"{where}: manifest field 'files': {rel!r} is under an unsealed folder")
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _HEX64.fullmatch(entry["sha256"])
              and isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0)
        if not ok:
            raise IntegrityError(f"{where}: manifest field 'files': {rel!r} needs a 64-hex 'sha256' and 'bytes'")
    if cfg.key is not None:
        sig = manifest.get("signature")
        if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
            raise IntegrityError(f"{where}: the bundle is unsigned, and this server requires bundles signed with "
                                 f"its key ({KEY_FILE_ENV}/{KEY_ENV} is set)")
        if sig.get("algorithm") != SIGNATURE_ALGORITHM:
            raise IntegrityError(f"{where}: signature algorithm {sig.get('algorithm')!r}; expected "
                                 f"{SIGNATURE_ALGORITHM!r}")
        want = signature(manifest, cfg.key)["value"]
        if not hmac.compare_digest(want, sig["value"]):
            raise IntegrityError(f"{where}: the signature does not match this server's key (key fingerprint "
                                 f"{key_fingerprint(cfg.key)}, the bundle names {sig.get('key_fingerprint')!r}): "
                                 "signed with another key, or the version or file list was changed")
    return files


def verify(bundle: str | Path, cfg: IntegrityConfig | None = None, only: str | None = None) -> dict:
    """Check the bundle against its manifest (see the module docstring); returns the manifest.

    only: a top-level folder (e.g. "policy"): check just its files (a component loading its part). Every call
    hashes the files again (about a second per GB): a cache keyed by size and mtime would miss a byte changed
    within the file system's timestamp granularity."""
    from prefmine.bundle import MANIFEST

    cfg = cfg if cfg is not None else IntegrityConfig.from_env()
    root = Path(bundle).resolve()
    try:
        raw = (root / MANIFEST).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{bundle} is not a finished bundle (no {MANIFEST})") from e
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise IntegrityError(f"{bundle}: {MANIFEST} is not valid JSON: {e}") from e
    files = check_manifest(manifest, cfg, where=str(bundle))
    present = bundle_files(root)

    def mine(rel: str) -> bool:
        return only is None or rel.split("/", 1)[0] == only

    present = [rel for rel in present if mine(rel)]
    unlisted = sorted(set(present) - set(files))
    if unlisted:
        raise IntegrityError(f"{bundle}: {unlisted[0]} is not listed in the manifest"
                             + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else "")
                             + ": files were added after the bundle was sealed")
    for rel in sorted(rel for rel in files if mine(rel)):
        path = inside(root, rel)
        want = files[rel]
        if not path.is_file():
            raise IntegrityError(f"{bundle}: {rel} is listed in the manifest but missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise IntegrityError(f"{bundle}: {rel} has {size} bytes, the manifest says {want['bytes']}: "
                                 "changed after the bundle was sealed")
        got = sha256_file(path)
        if got != want["sha256"]:
            raise IntegrityError(f"{bundle}: {rel}: sha256 {got[:16]}... differs from the manifest's "
                                 f"{want['sha256'][:16]}...: changed after the bundle was sealed")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`python -m prefmine.integrity verify|seal BUNDLE`: check a bundle, or (re)seal one you built yourself."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m prefmine.integrity", description=main.__doc__)
    p.add_argument("action", choices=("verify", "seal"))
    p.add_argument("bundle")
    a = p.parse_args(argv)
    try:
        m = verify(a.bundle) if a.action == "verify" else seal(a.bundle)
    except (IntegrityError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.bundle}: version {m['version']}, {len(m['files'])} files"
          + (", signed" if "signature" in m else ", unsigned") + (" (sealed)" if a.action == "seal" else " (ok)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
