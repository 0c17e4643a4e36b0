"""Policy training checkpoints: where they are, which one to resume, and whether it belongs to this run.

Checkpoints and resume (`checkpoint_dir`, `PolicyTrainConfig.checkpoint_every`): every `checkpoint_every`
iterations and after the last one the whole Algorithm is saved with `Algorithm.save_to_path` (RLlib's new-stack
Checkpointable format: LearnerGroup with the RLModule, target network and optimizer state, the local EnvRunner
with its connectors and its env-step counter, the Algorithm's MetricsLogger and training iteration) to
`checkpoint_dir/.iter_NNNNNN.*.tmp`, plus `prefmine_checkpoint.json` (iteration, elapsed seconds, the history
rows, and what the run must match: algorithm, obs spec, network, simulator config, a fingerprint of the
SimulatorInputs) written last; the folder is then renamed to `iter_NNNNNN`. Only the last two are kept. A folder
without the completed JSON (a driver killed mid-write) is ignored. A later call with the same `checkpoint_dir`
builds the algorithm from its config, `restore_from_path`s the newest complete checkpoint, and continues at
iteration N+1; the time budget counts the seconds already spent, and the history holds every iteration once.
A checkpoint of another algorithm, obs spec, network, simulator or data is refused (`CheckpointMismatch`), never
loaded into the wrong run. What survives a resume, as tests/test_policy_resume.py checks:

- RLModule weights, DQN target network, optimizer state, `training_iteration`: restored by `restore_from_path`.
- Env-step counters: `num_env_steps_sampled_lifetime` (MetricsLogger and the EnvRunner's own count) continues
  from the checkpoint, so DQN's epsilon schedule (driven by the EnvRunner's lifetime count), learning-starts
  and target-update timing continue rather than restart at 0.
- DQN replay buffer: *not* in RLlib's Algorithm checkpoint on the new API stack (`Algorithm.get_state` leaves
  `local_replay_buffer` out; only the old stack had `store_buffer_in_checkpoints`). With
  `checkpoint_replay_buffer` (default on) its `get_state()` is pickled beside the checkpoint and `set_state()`
  restores it; off, a resumed DQN learns at once (the counters are past learning-starts) from a nearly empty
  buffer.
- Not restored: the simulators' and the sampler's random streams (the env runner is rebuilt from the seed). A
  resumed run therefore draws from seed + iteration (not the original seed, which would replay the first
  iteration's sessions) and is not bit-identical to an uninterrupted one.

A checkpoint folder may be a URI (`prefmine.storage`: s3://, gs://, ...; the pipeline's `--storage`), so that a
driver restarted on another node resumes too: RLlib saves and restores a local folder (`local_checkpoint_dir`),
each finished checkpoint is copied to `<uri>/iter_NNNNNN` (`push_checkpoint`, its content index written last
marks it complete; the newest KEEP_CHECKPOINTS are kept there), and before training the newest complete one in
the store is copied into the local folder when the local folder has nothing as new (`pull_checkpoint`).

Nothing here imports Ray: `save_checkpoint` is handed the Algorithm (anything with `save_to_path` and, for
DQN, `local_replay_buffer`); the rest reads and writes plain folders and JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prefmine.policy.config import PolicyTrainConfig
from prefmine.policy.simulator import ObsSpec, SimulatorConfig, SimulatorInputs

CHECKPOINT_FORMAT = "prefmine-policy-checkpoint/1"
CHECKPOINT_STATE = "prefmine_checkpoint.json"  # written last: its presence (complete: true) marks a checkpoint done
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
KEEP_CHECKPOINTS = 2
_CKPT_RE = re.compile(r"iter_(\d{6,})")


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another run (algorithm, obs spec, network, simulator or data differ)."""


def inputs_fingerprint(inputs: SimulatorInputs) -> str:
    """sha1 of what the simulator is built from (states, vectors, popularity, histories, response model, blend)."""
    h = hashlib.sha1()
    for a in (inputs.user_states, inputs.item_vectors, inputs.item_popularity, inputs.response.item_emb,
              inputs.response.buy_prob, inputs.response.weights):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    lengths = np.array([len(x) for x in inputs.user_histories], dtype=np.int64)
    h.update(lengths.data)
    blend = getattr(inputs, "blend", None)
    if blend is not None:  # a blended simulator scores differently: another run
        h.update(f"blend beta={blend.beta!r} gamma={blend.gamma!r}".encode())
    if len(lengths):
        h.update(np.ascontiguousarray(np.concatenate(inputs.user_histories).astype(np.int64)).data)
    return h.hexdigest()


def checkpoint_identity(inputs: SimulatorInputs, sim_cfg: SimulatorConfig, cfg: PolicyTrainConfig,
                        spec: ObsSpec) -> dict:
    """What a run must share with a checkpoint to resume it (JSON types, so it compares with the saved copy)."""
    ident = {"format": CHECKPOINT_FORMAT, "algorithm": cfg.algorithm, "obs_size": spec.size,
             "obs_spec": spec.to_dict(), "hiddens": list(cfg.hiddens), "simulator": asdict(sim_cfg),
             "replay_buffer": cfg.replay_buffer if cfg.algorithm == "DQN" else None,
             "inputs_sha1": inputs_fingerprint(inputs)}
    if cfg.q_network != "flat":  # only then, so a flat run's checkpoint written before the option still resumes
        ident["network"] = {"kind": cfg.q_network, "state_hidden": cfg.state_hidden}
    return json.loads(json.dumps(ident))


def read_checkpoint_state(path: Path) -> dict | None:
    """The checkpoint's state JSON if the checkpoint is complete, else None."""
    try:
        state = json.loads((Path(path) / CHECKPOINT_STATE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and state.get("complete") is True and isinstance(state.get("iteration"), int)
    return state if ok else None


def find_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    """The newest complete `iter_NNNNNN` checkpoint in `checkpoint_dir`; None when there is none. Temp folders
    and `iter_*` folders without a completed state JSON (a driver killed mid-write) are ignored."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for p in Path(checkpoint_dir).iterdir():
        if p.is_dir() and _CKPT_RE.fullmatch(p.name):
            state = read_checkpoint_state(p)
            if state is not None:
                found.append((state["iteration"], p))
    return max(found)[1] if found else None


def check_resumable(state: dict, identity: dict, path: Path) -> None:
    """Raise CheckpointMismatch naming every field in which the checkpoint differs from this run."""
    diffs = []
    for key, want in identity.items():
        have = state.get(key)
        if have == want:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            sub = [f"{key}.{k}: checkpoint {have.get(k)!r}, this run {want.get(k)!r}"
                   for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
            diffs += sub
        else:
            diffs.append(f"{key}: checkpoint {have!r}, this run {want!r}")
    if diffs:
        raise CheckpointMismatch(
            f"policy checkpoint {path} was written by a different run and is not resumed: " + "; ".join(diffs)
            + f". Use another checkpoint_dir (CLI: --checkpoint-dir, or --fresh) or remove {Path(path).parent}")


def save_checkpoint(algo, checkpoint_dir: Path, state: dict, replay_buffer: bool = True) -> Path:
    """Write `checkpoint_dir/iter_NNNNNN` (NNNNNN = state["iteration"]): the Algorithm (`save_to_path`), the DQN
    replay buffer, and the state JSON last, all in a temp folder renamed into place; keep the newest
    KEEP_CHECKPOINTS complete ones and remove leftovers of killed writes."""
    d = Path(checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"iter_{state['iteration']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=d))
    try:
        algo.save_to_path(str(tmp.resolve()))
        buffer = getattr(algo, "local_replay_buffer", None)
        if replay_buffer and buffer is not None:
            with open(tmp / REPLAY_BUFFER_FILE, "wb") as f:
                pickle.dump(buffer.get_state(), f, protocol=pickle.HIGHEST_PROTOCOL)
            state = {**state, "replay_buffer_timesteps": int(buffer.get_num_timesteps())}
        (tmp / (CHECKPOINT_STATE + ".tmp")).write_text(json.dumps({**state, "complete": True}))
        os.replace(tmp / (CHECKPOINT_STATE + ".tmp"), tmp / CHECKPOINT_STATE)
        if final.exists():  # an incomplete folder of that name (never a complete one: iterations only grow)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    complete = sorted((read_checkpoint_state(p)["iteration"], p) for p in d.iterdir()
                      if p.is_dir() and _CKPT_RE.fullmatch(p.name) and read_checkpoint_state(p) is not None)
    for _, old in complete[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    for p in d.iterdir():  # temp folders of killed writes, and iter_* folders that never completed
        if p.is_dir() and p != final and ((p.name.startswith(".iter_") and p.name.endswith(".tmp"))
                                          or (_CKPT_RE.fullmatch(p.name) and read_checkpoint_state(p) is None)):
            shutil.rmtree(p, ignore_errors=True)
    return final



def local_checkpoint_dir(checkpoint_dir: str | Path) -> Path:
    """The local folder RLlib saves to and restores from: `checkpoint_dir` itself, or for a URI a folder of this
    machine's temp dir named after it (the same URI: the same folder, so a restarted driver here finds it)."""
    from prefmine.storage import is_uri

    if not is_uri(checkpoint_dir):
        return Path(checkpoint_dir)
    digest = hashlib.sha256(str(checkpoint_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"prefmine-policy-checkpoints-{digest}"


def _stored_iterations(uri: str) -> list[int]:
    """Iterations of the complete checkpoints at `uri` (folders `iter_NNNNNN` whose content index is written)."""
    import pyarrow.fs as pafs

    from prefmine.storage import CONTENT, resolve

    fs, root = resolve(uri)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        m = _CKPT_RE.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and m and \
                fs.get_file_info(f"{info.path}/{CONTENT}").type == pafs.FileType.File:
            found.append(int(m.group(1)))
    return sorted(found)


def push_checkpoint(path: Path, uri: str) -> str:
    """Copy the complete local checkpoint `path` to `<uri>/<its name>` and keep the newest KEEP_CHECKPOINTS
    there; returns where it went."""
    import pyarrow.fs as pafs

    from prefmine.storage import join, put_dir, resolve

    dest = join(uri, Path(path).name)
    put_dir(path, dest)
    fs, root = resolve(uri)
    for it in _stored_iterations(uri)[:-KEEP_CHECKPOINTS]:
        try:
            fs.delete_dir(f"{root}/iter_{it:06d}")
        except (OSError, pafs.ArrowException):  # removed by another driver already
            pass
    return dest


def pull_checkpoint(uri: str, local_dir: Path) -> Path | None:
    """Copy the newest complete checkpoint stored at `uri` into `local_dir` unless `local_dir` already has one as
    new; the newest local checkpoint afterwards (None: none anywhere). Each file is checked against the content
    index's sha256 on the way (`prefmine.storage.get_dir`)."""
    from prefmine.storage import CONTENT, StorageConfig, get_dir, join

    stored = _stored_iterations(uri)
    have = find_checkpoint(local_dir)
    if not stored or (have is not None and read_checkpoint_state(have)["iteration"] >= stored[-1]):
        return have
    name = f"iter_{stored[-1]:06d}"
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=local_dir))
    try:
        got = get_dir(join(uri, name), StorageConfig(cache_dir=str(staging)))
        (got / CONTENT).unlink()
        shutil.rmtree(local_dir / name, ignore_errors=True)  # an incomplete local folder of that name
        os.rename(got, local_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return find_checkpoint(local_dir)


def remove_checkpoints(checkpoint_dir: str | Path) -> None:
    """Remove a run's checkpoints: the folder, or for a URI its stored copies and this machine's local folder."""
    import pyarrow.fs as pafs

    from prefmine.storage import is_uri, resolve

    shutil.rmtree(local_checkpoint_dir(checkpoint_dir), ignore_errors=True)
    if is_uri(checkpoint_dir):
        fs, root = resolve(checkpoint_dir)
        try:
            fs.delete_dir(root)
        except (OSError, pafs.ArrowException):  # nothing stored
            pass
