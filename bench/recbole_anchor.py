"""RecBole 1.2.1 as an anchor for prefmine's quality numbers, run on prefmine's own leave-one-out split.

RecBole lives in its own virtual environment (`.venv-recbole/`, versions pinned in
`bench/recbole-requirements.txt`) because it needs other versions than prefmine (ray<=2.6.3 among them). This
module runs in prefmine's environment; it

- writes a prepared prefmine dataset as a RecBole atomic `.inter` file whose time order reproduces prefmine's
  split exactly (`write_atomic`),
- creates the RecBole environment on first use (`ensure_venv`),
- runs `bench/recbole_runner.py` in that environment and returns its JSON (`run_recbole`).

    python -m bench.recbole_anchor --data /path/to/prepared --models Pop SASRec --out result.json [--time-cap-s 300]

Timestamps are per-user ordinals: a user's train items get 0, 1, ..., n-1 in prefmine's chronological order,
the valid item n and the test item n+1. Within a user every timestamp is distinct, so RecBole's time ordering
(`order: TO`) needs no tie-breaking and its leave-one-out split (`split: {LS: valid_and_test}`) takes exactly
prefmine's valid and test items; ties between users do not matter because the split groups by user.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "bench" / "recbole-requirements.txt"
RUNNER = REPO / "bench" / "recbole_runner.py"
DEFAULT_VENV = REPO / ".venv-recbole"
MODELS = ["Pop", "ItemKNN", "BPR", "GRU4Rec", "SASRec", "BERT4Rec"]
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def write_atomic(ds, out_dir: Path, name: str) -> Path:
    """Write `<out_dir>/<name>/<name>.inter` from a prefmine `Dataset`; returns the file's path.

    Tokens are prefmine's indices (user index, item index), so RecBole's results map back without a lookup.
    Users without a valid or test item keep only what they have (RecBole then puts fewer rows in each phase).
    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.inter"
    users, items, stamps = [], [], []
    for u in range(len(ds.users)):
        seq = np.asarray(ds.train_seqs[u], dtype=np.int64)
        extra = [int(x) for x in (ds.valid_item[u], ds.test_item[u]) if x >= 0]
        full = np.concatenate([seq, np.asarray(extra, dtype=np.int64)])
        users.append(np.full(len(full), u, dtype=np.int64))
        items.append(full)
        stamps.append(np.arange(len(full), dtype=np.int64))
    u_all = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    i_all = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    t_all = np.concatenate(stamps) if stamps else np.zeros(0, dtype=np.int64)
    if len(i_all) and (i_all.min() < 0 or i_all.max() >= ds.n_items):
        raise ValueError(f"{ds.path}: item index out of range 0..{ds.n_items - 1}")
    tmp = path.with_suffix(".inter.tmp")
    with open(tmp, "w") as f:
        f.write(HEADER)
        f.writelines(f"{u}\t{i}\t{t}.0\n" for u, i, t in zip(u_all.tolist(), i_all.tolist(), t_all.tolist()))
    os.replace(tmp, path)
    return path


def _venv_python(path: Path) -> Path:
    return Path(path) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """Return the python of the RecBole environment at `path`, creating it and installing the pins if missing.

    A marker file holding the requirements' text tells whether the environment matches the current pins; when
    the pins change, the environment is brought up to date by pip.
    """
    path = Path(path)
    python = _venv_python(path)
    marker = path / ".prefmine-recbole-requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    if not python.exists():
        print(f"creating the RecBole environment at {path}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(path)
    print(f"installing {REQUIREMENTS.name} into {path} (several minutes the first time)", file=sys.stderr,
          flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                   check=True)
    # One import proves the environment works before anything relies on it.
    subprocess.run([str(python), "-c", "import recbole, torch; print('recbole', recbole.__version__, "
                    "'torch', torch.__version__)"], check=True)
    marker.write_text(wanted)
    return python


def run_recbole(python: Path, data_dir: Path, name: str, models: list[str], seed: int, out_json: Path,
                time_cap_s: float | None, *, probe_batches: int = 0, state_dir: Path | None = None) -> dict:
    """Run `bench/recbole_runner.py` with `python` on `<data_dir>/<name>/<name>.inter`; returns its JSON.

    `time_cap_s` caps each model's training wall clock (None: train until early stopping). The runner writes
    `out_json` itself; its progress goes to this process's stderr. `probe_batches` > 0 only times that many
    training batches and one validation pass per model (for sizing a run on a big dataset). `state_dir` keeps
    each model's per-epoch training state there, so a killed run continues where it stopped when started again
    with the same data and settings (see bench/recbole_runner.py).
    """
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(RUNNER), "--data-dir", str(data_dir), "--dataset", name, "--seed", str(seed),
           "--out", str(out_json), "--models", *models]
    if time_cap_s is not None:
        cmd += ["--time-cap-s", str(float(time_cap_s))]
    if probe_batches:
        cmd += ["--probe-batches", str(int(probe_batches))]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    # RecBole 1.2.1 calls torch.load() on its own checkpoints (which pickle the config) without weights_only;
    # torch >= 2.6 refuses that by default. The runner also passes weights_only=False itself; this is the
    # documented switch for any other torch.load inside RecBole.
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    env.pop("PYTHONPATH", None)  # the RecBole venv must not see prefmine's packages
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out_json.read_text())


def main(argv: list[str] | None = None) -> None:
    from prefmine.data.dataset import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared prefmine dataset directory")
    ap.add_argument("--name", default=None, help="dataset name for RecBole (default: the directory's name)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--time-cap-s", type=float, default=None)
    ap.add_argument("--probe-batches", type=int, default=0, help="only time this many batches per model")
    ap.add_argument("--venv", default=str(DEFAULT_VENV))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ds = load_dataset(args.data)
    name = args.name or Path(args.data).resolve().name
    python = ensure_venv(Path(args.venv))
    with tempfile.TemporaryDirectory(prefix="recbole-atomic-") as tmp:
        write_atomic(ds, Path(tmp), name)
        res = run_recbole(python, Path(tmp), name, args.models, args.seed, Path(args.out), args.time_cap_s,
                          probe_batches=args.probe_batches)
    print(json.dumps({m: r.get("test", {}).get("NDCG@10", r.get("probe")) for m, r in res["models"].items()},
                     indent=1))


if __name__ == "__main__":
    main()
