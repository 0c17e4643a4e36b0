"""RecTools' SASRec with sampled softmax as a measured anchor for the S3-Rec sets, on prefmine's identical split.

RecTools lives in its own virtual environment (`.venv-rectools/`, versions pinned in
`bench/rectools-requirements.txt`) because its pins clash with prefmine's (numpy<2, pandas<3, attrs<24). This
module runs in prefmine's environment; it

- writes the transformer_benchmark view of a prepared data set as the runner's split files (`write_split`): every
  user's train items and validation item in order (the validation item last, the runner's early-stopping target)
  and the kept test users; ids are the view's indices, so the runner's lists map back without a lookup;
- creates the environment on first use (`ensure_venv`) and runs `bench/rectools_runner.py` in it (`run_rectools`);
- scores the runner's top-K lists with prefmine's own metrics on the same test users and targets (`score`):
  full ranking over the items RecTools knows, history excluded by RecTools (`filter_viewed`), K up to 20.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "bench" / "rectools-requirements.txt"
RUNNER = REPO / "bench" / "rectools_runner.py"
DEFAULT_VENV = REPO / ".venv-rectools"


def write_split(ds, out_dir: Path) -> Path:
    """`train.tsv` (user, item, ts: train items then the validation item) and `test_users.txt` under `out_dir`,
    each written to a temporary name and renamed; rewritten only when the content changes (the runner's resume
    key hashes them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["user\titem\tts\n"]
    for u in range(len(ds.users)):
        seq = [int(i) for i in ds.train_seqs[u]] + ([int(ds.valid_item[u])] if ds.valid_item[u] >= 0 else [])
        lines.extend(f"{u}\t{i}\t{t}\n" for t, i in enumerate(seq))
    users = ds.eval_users("test")
    for name, text in (("train.tsv", "".join(lines)), ("test_users.txt", "".join(f"{int(u)}\n" for u in users))):
        path = out / name
        if path.is_file() and path.read_text() == text:
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return out


def _venv_python(path: Path) -> Path:
    return Path(path) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """The python of the RecTools environment at `path`, created with the pins when missing or out of date."""
    path = Path(path)
    python = _venv_python(path)
    marker = path / ".prefmine-rectools-requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    if not python.exists():
        print(f"creating the RecTools environment at {path}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(path)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                   check=True)
    subprocess.run([str(python), "-c", "import rectools, torch; print('rectools', rectools.__version__)"],
                   check=True)
    marker.write_text(wanted)
    return python


def run_rectools(python: Path, split_dir: Path, out_json: Path, state_dir: Path, seed: int = 2020,
                 epochs: int = 200, patience: int = 50) -> dict:
    """Run the runner on `split_dir` (resumable under `state_dir`); its JSON result."""
    import json

    cmd = [str(python), str(RUNNER), "--split", str(split_dir), "--out", str(out_json), "--state-dir",
           str(state_dir), "--seed", str(seed), "--epochs", str(epochs), "--patience", str(patience)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the RecTools environment must not see prefmine's packages
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(out_json).read_text())


def score(result: dict, ds) -> dict:
    """prefmine's metrics (K = 5, 10, 20) of the runner's lists on the view's test users and targets; a user the
    runner returned no list for counts as a miss."""
    from prefmine.metrics import KS, ranking_metrics

    users = ds.eval_users("test")
    lists = dict(zip(result["users"], result["items"]))
    width = max(KS)
    top = np.full((len(users), width), -1, dtype=np.int64)
    for row, u in enumerate(users):
        items = lists.get(int(u), [])[:width]
        top[row, :len(items)] = items
    return ranking_metrics(top, ds.test_item[users], KS, ds.n_items)


class RecToolsJob:
    """The anchor on one data set in a background thread beside prefmine's training (`start`, then `finish`)."""

    def __init__(self, ds, cache: Path, name: str, seed: int = 2020):
        self.ds, self.name, self.seed = ds, name, seed
        self.split = write_split(ds, Path(cache) / "rectools" / "split" / name)
        self.out = Path(cache) / "rectools" / f"{name}.json"
        self.state = Path(cache) / "rectools" / "state" / name
        self.result: dict | None = None
        self.error: str | None = None
        self.thread = None

    def _run(self) -> None:
        try:
            self.result = run_rectools(ensure_venv(), self.split, self.out, self.state, self.seed)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"

    def start(self) -> RecToolsJob:
        import threading

        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> dict:
        """{"row": the model row for the report, "record": training record} or {"error": ...}."""
        self.thread.join()
        if self.error:
            return {"error": self.error}
        r = self.result
        row = {**score(r, self.ds), "converged": r["converged"], "epochs": r["epochs"],
               "best_epoch": r["best_epoch"], "seconds_to_best": r["seconds_to_best"]}
        record = {k: v for k, v in r.items() if k not in ("users", "items")}
        return {"row": row, "record": record}


def main(argv=None) -> int:
    """Run the anchor alone on one S3-Rec set into bench.quality's cache (the same split files and resumable state,
    so a later `python -m bench.quality --resume` with that cache reuses the finished result)."""
    import argparse
    import json

    from bench.quality import ROOT, SEQREC, prepare_dataset
    from prefmine.data.dataset import load_dataset
    from prefmine.data.split import transformer_benchmark_view

    p = argparse.ArgumentParser(description="RecTools SASRec+SS anchor on one S3-Rec set (bench.quality's split)")
    p.add_argument("--dataset", required=True, choices=SEQREC)
    p.add_argument("--raw", default=os.environ.get("PREFMINE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench_quality"))
    args = p.parse_args(argv)
    os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "bench-quality-pseudonym-key")
    cache = Path(args.cache).resolve()
    ds = transformer_benchmark_view(load_dataset(prepare_dataset(args.dataset, Path(args.raw), cache)))
    out = RecToolsJob(ds, cache, args.dataset).start().finish()
    print(json.dumps(out.get("row", out), indent=1))
    return 0 if "row" in out else 1


if __name__ == "__main__":
    raise SystemExit(main())
