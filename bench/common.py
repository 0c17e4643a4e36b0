"""What the benchmarks share: where the repository and the real data are, where results go, and `--plan`.

Every benchmark finds real data the way the other entry points do (`$PREFMINE_DATA_DIR`, else `../shared/data`
beside the checkout), writes its JSON to `bench/results/<name>.json` by default (a `--quick` smoke run to
`runs/bench/<name>.quick.json`, so it never overwrites the rendered results), and has a `--plan` mode: resolve
the inputs and settings, check that every input exists, print them as JSON and stop, without training,
measuring or writing anything. `tests/test_bench_cli.py` runs each benchmark's `--help` and `--plan`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "PREFMINE_DATA_DIR"


def data_root() -> Path:
    """`$PREFMINE_DATA_DIR`, else `../shared/data` beside the repository (it may not exist: see require)."""
    return Path(os.environ.get(DATA_DIR_ENV) or ROOT.parent / "shared" / "data")


def default_out(name: str, quick: bool) -> Path:
    """bench/results/<name>.json, or runs/bench/<name>.quick.json for a --quick run."""
    return ROOT / "runs" / "bench" / f"{name}.quick.json" if quick else ROOT / "bench" / "results" / f"{name}.json"


def add_common(parser: argparse.ArgumentParser, name: str) -> None:
    """--out (default: see default_out) and --plan."""
    parser.add_argument("--out", default=None,
                        help=f"result JSON (default bench/results/{name}.json; --quick: runs/bench/{name}.quick.json)")
    parser.add_argument("--plan", action="store_true",
                        help="check the inputs, print the resolved settings as JSON and stop (nothing runs)")


def require(paths, hint: str = f"set {DATA_DIR_ENV} or pass --data") -> None:
    """Stop with an error naming the first input that is missing."""
    for p in paths:
        if not Path(p).exists():
            raise SystemExit(f"error: input {p} does not exist ({hint})")


def write_results(out: Path, report: dict, table: str) -> None:
    """The result JSON at `out`, its rendered table beside it (`out` with .md), and the table on the console."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table, flush=True)


def print_plan(bench: str, **settings) -> int:
    print(json.dumps({"bench": bench, "plan": settings}, indent=2, default=str), flush=True)
    return 0
