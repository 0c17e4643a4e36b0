"""`prefmine data download`: fetch raw files from their original publishers (needs internet).

Amazon Review Data (2018) from UCSD's McAuley lab data repository and MovieLens latest-small from GroupLens.
Files land under `<out>/amazon2018/<Category>/` and `<out>/movielens/ml-latest-small/`, the layout that
PREFMINE_DATA_DIR and `--raw` expect. Nothing in prefmine downloads implicitly.
"""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from pathlib import Path

AMAZON_BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"


def _fetch(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    print(f"downloading {url} -> {dest}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"download of {url} failed ({e}); on a machine without internet pass --raw or "
                           f"PREFMINE_DATA_DIR with the files instead") from e
    tmp.rename(dest)


def download(source: str, out: str | Path, category: str = "Magazine_Subscriptions") -> Path:
    out = Path(out)
    if source == "amazon2018":
        folder = out / "amazon2018" / category
        _fetch(f"{AMAZON_BASE}/categoryFilesSmall/{category}_5.json.gz", folder / f"{category}_5.json.gz")
        _fetch(f"{AMAZON_BASE}/categoryFilesSmall/{category}.csv", folder / f"{category}.csv")
        _fetch(f"{AMAZON_BASE}/metaFiles2/meta_{category}.json.gz", folder / f"meta_{category}.json.gz")
        return out / "amazon2018"
    if source == "movielens":
        zpath = out / "movielens" / "ml-latest-small.zip"
        _fetch(MOVIELENS_URL, zpath)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(out / "movielens")
        return out / "movielens"
    raise ValueError(f"unknown source {source!r}")
