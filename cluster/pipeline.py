"""The training pipeline: dataset -> encoder -> ranker -> policy -> one versioned bundle.

`train_bundle(data, out, stages, preset, config_file)` runs the requested stages in order on a Ray it joins or
starts (`cluster.ray_env.ensure_ray`). A config file (YAML) may hold `encoder:`, `ranker:`, `policy:`,
`simulator:` and `dist:` sections; unknown keys are errors. Each stage records its config and metrics in the
bundle manifest; the manifest is rewritten atomically after each stage.

The bundle is built in a local staging directory (a copy of the bundle already at `out`, if any, so one stage can
be retrained) and published to `out` at the end through `prefmine.store` with the manifest written last: `out`
may be a local path or a cloud URI (s3://, gs://, ...), and serving never picks up a half-written bundle. Just
before publishing, the bundle is sealed (prefmine.integrity.seal): the manifest lists every file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from cluster.ds_train import DistConfig
from cluster.ray_env import ensure_ray
from prefmine import config as C
from prefmine import store
from prefmine.bundle import (
    drop_checkpoints,
    is_published,
    new_version,
    read_manifest,
    update_manifest,
    write_catalog,
)
from prefmine.data.dataset import load_dataset
from prefmine.integrity import IntegrityConfig, seal
from prefmine.policy.inputs import simulator_inputs  # noqa: F401  (re-exported for the evaluate job and benches)
from prefmine.ranker.model import PRESETS as RANKER_PRESETS
from prefmine.text.encoder import PRESETS as ENCODER_PRESETS

STAGES = ("encoder", "ranker", "policy")
DIST_PRESETS = {"tiny": DistConfig(), "base": DistConfig(num_workers=1, use_gpu=True),
                "large": DistConfig(num_workers=4, use_gpu=True, deepspeed_config="zero2.json")}


def train_bundle(data: str | Path, out: str | Path, stages=STAGES, preset: str = "tiny",
                 config_file: str | None = None, keep_checkpoints: bool = False) -> dict:
    """Train `stages` into the bundle at `out` and publish it; the metrics of each stage. The Ray Train
    checkpoints of the runs are dropped from the bundle unless `keep_checkpoints` (`drop_checkpoints`)."""
    from cluster.train_encoder import train_encoder
    from cluster.train_policy import gate_trained_policy, train_policy
    from cluster.train_ranker import train_ranker
    from prefmine.policy.config import POLICY_PRESETS
    from prefmine.policy.simulator import SIMULATOR_PRESETS

    file = C.load_file(config_file) if config_file else {}
    unknown = set(file) - {"encoder", "ranker", "policy", "simulator", "dist"}
    if unknown:
        raise C.ConfigError(f"config file {config_file}: unknown section(s) {sorted(unknown)}")
    enc_cfg = C.resolve(ENCODER_PRESETS, preset, file.get("encoder"))
    rank_cfg = C.resolve(RANKER_PRESETS, preset, file.get("ranker"))
    pol_cfg = C.resolve(POLICY_PRESETS, preset, file.get("policy"))
    sim_cfg = C.resolve(SIMULATOR_PRESETS, pol_cfg.simulator, file.get("simulator"))
    dist = C.resolve(DIST_PRESETS, preset, file.get("dist"))
    IntegrityConfig.from_env()  # a bad signing key fails now, not after training

    ds = load_dataset(data, with_reviews=True)
    bundle = staging_dir(out)
    shutil.rmtree(bundle, ignore_errors=True)  # a staging left by a run that died: start clean
    if is_published(out):  # retraining some stages of an existing bundle: start from a copy of it
        shutil.copytree(store.fetch(out), bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    try:
        version = read_manifest(bundle)["version"]
    except (FileNotFoundError, KeyError):
        version = None
    if version is None or "encoder" in stages:
        version = new_version(ds.manifest.get("data_hash", "nodata"))
        update_manifest(bundle, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_catalog(bundle, ds)
    update_manifest(bundle, format="prefmine-bundle/2", version=version, preset=preset,
                    data_hash=ds.manifest.get("data_hash"), dataset=ds.manifest)
    ensure_ray()
    metrics: dict = {}
    t0 = time.time()
    if "encoder" in stages:
        metrics["encoder"] = train_encoder(ds, bundle, enc_cfg, dist)
    if "ranker" in stages:
        metrics["ranker"] = train_ranker(ds, bundle, rank_cfg, dist)
    if "policy" in stages:
        inputs = simulator_inputs(ds, bundle)
        # Algorithm checkpoints beside the Ray Train runs; a driver restarted on this staging resumes from them.
        # Removed once the policy is exported: they are not part of the bundle, and a later retrain of this
        # stage (which starts from a copy of the bundle) must start a new run, not resume the finished one.
        metrics["policy"] = train_policy(inputs, bundle / "policy", pol_cfg, sim_cfg,
                                         checkpoint_dir=bundle / ".train" / "policy")
        shutil.rmtree(bundle / ".train" / "policy", ignore_errors=True)
        # the gate: serve the learned policy only where it beats the best heuristic (policy/gate.json)
        gate = gate_trained_policy(inputs, bundle / "policy", pol_cfg.gate_sessions, seed=pol_cfg.seed)
        metrics["policy"]["gate"] = gate["decision"]
        update_manifest(bundle, components={"policy": {"algorithm": pol_cfg.algorithm, "config": C.to_dict(pol_cfg),
                                                       "simulator": C.to_dict(sim_cfg),
                                                       "metrics": {k: v for k, v in metrics["policy"].items()
                                                                   if k != "history"},
                                                       "gate": {**gate["decision"], "alpha_tuning": gate["mix_tuning"],
                                                                "sessions": gate["sessions"]}}})
    update_manifest(bundle, train_seconds=round(time.time() - t0, 1))
    if not keep_checkpoints:
        metrics["checkpoint_bytes_dropped"] = drop_checkpoints(bundle)
    seal(bundle)  # every file's sha256 into the manifest (signed when PREFMINE_BUNDLE_KEY[_FILE] is set)
    metrics["published"] = store.publish(bundle, out)
    shutil.rmtree(bundle, ignore_errors=True)
    return metrics


def staging_dir(out: str | Path) -> Path:
    """Where a bundle for `out` is built: beside a local `out` (same disk: cheap copy), else a temp dir."""
    if store.is_uri(out) and not str(out).startswith("file://"):
        return Path(tempfile.gettempdir()) / f"prefmine-staging-{hashlib.sha1(str(out).encode()).hexdigest()[:12]}"
    path = Path(store.resolve(out)[1])
    return path.parent / f".{path.name}.staging"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train encoder, ranker and policy into one bundle.")
    p.add_argument("stage", nargs="?", choices=STAGES)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", choices=C.PRESETS)
    p.add_argument("--config")
    p.add_argument("--keep-checkpoints", action="store_true", help="publish the Ray Train checkpoints too")
    args = p.parse_args(argv)
    m = train_bundle(args.data, args.out, (args.stage,) if args.stage else STAGES, args.preset, args.config,
                     args.keep_checkpoints)
    print(json.dumps({stage: {k: v for k, v in part.items() if k != "history"} if isinstance(part, dict) else part
                      for stage, part in m.items()}, indent=2, default=str)[:4000])
    print(f"bundle written: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
