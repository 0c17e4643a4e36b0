"""Stale locks of torch's JIT extension builds, which would otherwise hang every later DeepSpeed start.

DeepSpeed builds its CPU ops (shared-memory comm, CPU Adam) with torch's cpp_extension on first use. The build
holds a `lock` file in the extension's folder (torch's FileBaton) and removes it when done; a build killed on
the way (a worker SIGKILLed, a node lost, a job stopped) leaves the file behind, and every later process waits
for it forever with no message: training simply never starts. `clear_stale_locks` removes such a file once it is
older than any real build takes, before DeepSpeed is initialised.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STALE_AFTER_S = 900.0  # a real build takes minutes; a lock this old belongs to a build that died


def extensions_dir() -> Path:
    """Where torch's cpp_extension builds: $TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def clear_stale_locks(root: Path | None = None, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove build locks under `root` (default: `extensions_dir()`) not touched for `stale_after_s` seconds;
    returns the removed paths. Locks of builds running now are younger and are left alone."""
    root = Path(root) if root is not None else extensions_dir()
    removed = []
    now = time.time()
    for lock in list(root.glob("*/lock")) + list(root.glob("*/*/lock")):
        try:
            if now - lock.stat().st_mtime > stale_after_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:  # finished (or cleared by another worker) meanwhile
            continue
    return removed
