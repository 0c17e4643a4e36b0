"""The training pipeline: dataset -> encoder -> ranker -> policy -> one versioned bundle.

`train_bundle(data, out, stages, preset, config_file, overrides)` runs the requested stages in order on a Ray it
joins or starts (`cluster.ray_env.ensure_ray`), with the config tree of `prefmine.train_config` (a preset, a
YAML file of sections, ``section.key=value`` overrides; unknown keys are errors). Each stage records its config and metrics in the
bundle manifest; the manifest is rewritten atomically after each stage.

The ranker stage also fits the click-probability calibration of Rank's ad auction (``ads/``).
The bundle is built in a local staging directory (a copy of the bundle already at `out`, if any, so one stage can
be retrained) and published to `out` at the end through `prefmine.store` with the manifest written last: `out`
may be a local path or a cloud URI (s3://, gs://, ...), and serving never picks up a half-written bundle. Just
before publishing, the bundle is sealed (prefmine.integrity.seal): the manifest lists every file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from cluster.ray_env import ensure_ray
from prefmine import config as C
from prefmine import store, train_config
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
from prefmine.policy.checkpoint import remove_checkpoints
from prefmine.policy.inputs import simulator_inputs  # noqa: F401  (re-exported for the evaluate job and benches)
from prefmine.storage import join

STAGES = ("encoder", "ranker", "policy")


def train_bundle(data: str | Path, out: str | Path, stages=STAGES, preset: str = "tiny",
                 config_file: str | None = None, keep_checkpoints: bool = False,
                 overrides: list[str] | None = None) -> dict:
    """Train `stages` into the bundle at `out` and publish it; the metrics of each stage. The Ray Train
    checkpoints of the runs are dropped from the bundle unless `keep_checkpoints` (`drop_checkpoints`)."""
    tree = train_config.load(preset, config_file, overrides)  # a bad key or value fails before the imports below
    enc_cfg, rank_cfg, pol_cfg, sim_cfg, dist = tree.encoder, tree.ranker, tree.policy, tree.simulator, tree.dist
    IntegrityConfig.from_env()  # a bad signing key fails now, not after training

    from cluster.train_encoder import train_encoder
    from cluster.train_policy import gate_trained_policy, train_policy
    from cluster.train_ranker import train_ranker

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
    update_manifest(bundle, format="prefmine-bundle/2", version=version, preset=preset, config=tree.to_dict(),
                    data_hash=ds.manifest.get("data_hash"), dataset=ds.manifest)
    ensure_ray()
    metrics: dict = {}
    t0 = time.time()
    if "encoder" in stages:
        metrics["encoder"] = train_encoder(ds, bundle, enc_cfg, dist, tree.embed)
    if "ranker" in stages:
        metrics["ranker"] = train_ranker(ds, bundle, rank_cfg, dist, retrieval=tree.retrieval, search=tree.search)
        metrics["ads"] = calibrate_clicks(ds, bundle, tree.ads)
    if "policy" in stages:
        inputs = simulator_inputs(ds, bundle)
        # Algorithm checkpoints beside the Ray Train runs; a driver restarted on this staging resumes from them.
        # Removed once the policy is exported: they are not part of the bundle, and a later retrain of this
        # stage (which starts from a copy of the bundle) must start a new run, not resume the finished one.
        # With a URI run storage they are copied there too, so a driver restarted on another node resumes.
        checkpoints = (join(dist.storage, "policy", bundle.name) if dist.storage and store.is_uri(dist.storage)
                       else bundle / ".train" / "policy")
        metrics["policy"] = train_policy(inputs, bundle / "policy", pol_cfg, sim_cfg, checkpoint_dir=checkpoints)
        remove_checkpoints(checkpoints)
        # the gate: serve the learned policy only where it beats the best heuristic (policy/gate.json)
        gate = gate_trained_policy(inputs, bundle / "policy", pol_cfg.gate_sessions, seed=pol_cfg.seed)
        metrics["policy"]["gate"] = gate["decision"]
        update_manifest(bundle, components={"policy": {"algorithm": pol_cfg.algorithm, "config": C.to_dict(pol_cfg),
                                                       "simulator": C.to_dict(sim_cfg),
                                                       "metrics": {k: v for k, v in metrics["policy"].items()
                                                                   if k != "history"},
                                                       "gate": gate["manifest_entry"]}})
    update_manifest(bundle, train_seconds=round(time.time() - t0, 1))
    if not keep_checkpoints:
        metrics["checkpoint_bytes_dropped"] = drop_checkpoints(bundle)
    seal(bundle)  # every file's sha256 into the manifest (signed when PREFMINE_BUNDLE_KEY[_FILE] is set)
    metrics["published"] = store.publish(bundle, out)
    shutil.rmtree(bundle, ignore_errors=True)
    return metrics


def calibrate_clicks(ds, bundle: Path, config=None) -> dict:
    """The ranker's click-probability calibration for Rank's ad auction (prefmine.ads.bundle_calibration: fitted
    and judged on held-out validation users, the optional part ``ads/``), its figures in the manifest. A data set
    too small to fit one (no clicks in a half) leaves the part out: Rank then serves raw probabilities. config:
    the tree's `ads` section (AdsConfig)."""
    from prefmine.ads.bundle_calibration import PART, fit_bundle_calibration

    shutil.rmtree(bundle / PART, ignore_errors=True)  # a retrained ranker: the old calibration no longer applies
    try:
        report = fit_bundle_calibration(ds, bundle, config)
    except ValueError as e:
        report = {"kind": "calibration", "skipped": str(e)}
    update_manifest(bundle, components={PART: report})
    return report


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
    p.add_argument("--preset", default="tiny", choices=sorted(train_config.PRESETS))
    p.add_argument("--config", help="YAML/JSON config tree (prefmine.train_config)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config tree overrides")
    p.add_argument("--keep-checkpoints", action="store_true", help="publish the Ray Train checkpoints too")
    p.add_argument("--storage", default=os.environ.get("PREFMINE_STORAGE") or None,
                   help="Ray Train runs and checkpoints (path or URI): --set dist.storage=URI "
                        "(default: $PREFMINE_STORAGE, which ray_cluster.yaml's nodes export)")
    args = p.parse_args(argv)
    m = train_bundle(args.data, args.out, (args.stage,) if args.stage else STAGES, args.preset, args.config,
                     args.keep_checkpoints, args.set + ([f"dist.storage={args.storage}"] if args.storage else []))
    print(json.dumps({stage: {k: v for k, v in part.items() if k != "history"} if isinstance(part, dict) else part
                      for stage, part in m.items()}, indent=2, default=str)[:4000])
    print(f"bundle written: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
