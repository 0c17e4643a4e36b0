"""The Ray Serve application builder: the encoder and ranker deployments behind a gRPC ingress.

Graph (each box a separate deployment, composed with DeploymentHandles)::

    gRPC proxy -> RecommenderIngress --handle--> RankerDeployment   (user state + top-N candidates; Recommend's
                  (serve/ingress.py)            (serve/deployments/  slate, by the policy it also holds; the
                                                 ranker.py)          policy's kind for ModelInfo)
                                     --handle--> EncoderDeployment  (text embeddings; Search; ModelInfo's dim)
                                                (serve/deployments/encoder.py)

The ingress answers the RPCs of ``prefmine.v1.Recommender`` (protos/prefmine/v1/recommender.proto) and the
standard ``grpc.health.v1.Health/Check`` (serve/ingress.py). The deployments load one runtime per bundle version
and compute with prefmine.serving (Ray-free, unit-tested). Every deployment has a ``check_health`` that fails
while it holds no loaded bundle version, and a bounded queue (``MAX_QUEUED``).

The hot path: Recommend is one hop from the ingress, ``RankerDeployment.slate``: the ranker batches concurrent
users (``@serve.batch``) and then orders each slate with the same bundle version's policy, loaded in the ranker
replica too (prefmine.serving.policy.PolicyVersion); what a second hop to a policy deployment cost is in
bench/README.md (serving latency). The bundle version is every deployment's ``user_config``: a new version is
rolled in by a lightweight update, each request answered by one version end to end (serve/served.py).

``build_app({"bundle": PATH, ...})`` is the application builder used by ``serve/run.py`` and
``serve/config.yaml``. The names other modules import from here (the deployments, the ingress, their constants)
are re-exported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

from prefmine.bundle import missing_parts
from prefmine.serving.policy import PolicyVersion as _PolicyVersion
from prefmine.serving.ranking import candidates_for
from prefmine.serving.slate import slate_scores
from serve.auth import AuthConfig
from serve.deployments import (
    MAX_QUEUED,
    RANKER_BATCH,
    RANKER_BATCH_WAIT_S,
    EncoderDeployment,
    RankerDeployment,
    require_loaded,
)
from serve.ingress import (
    DEFAULT_CANDIDATES,
    REPLICA_RETRY_S,
    SEARCH_CANDIDATES,
    TOMBSTONE_CHECK_S,
    Erased,
    ImpressionNotLogged,
    NotFound,
    RecommenderIngress,
)
from serve.served import BundleRef
from serve.validate import K_MAX, MAX_EXCLUDE, BadRequest, validate_request
from serve.wire import SERVICER_FUNCTION

APP_NAME = "prefmine"
GRPC_SERVICER = SERVICER_FUNCTION  # serve.wire.add_services: Recommender + Health, lenient request parsing
__all__ = [
    "APP_NAME", "DEFAULT_CANDIDATES", "GRPC_SERVICER", "K_MAX", "MAX_EXCLUDE", "MAX_QUEUED", "RANKER_BATCH",
    "RANKER_BATCH_WAIT_S", "REPLICA_RETRY_S", "SEARCH_CANDIDATES", "TOMBSTONE_CHECK_S", "BadRequest",
    "EncoderDeployment", "Erased", "ImpressionNotLogged", "NotFound", "RankerDeployment", "RecommenderIngress",
    "_PolicyVersion", "build_app", "candidates_for", "check_bundle", "default_feedback_db", "require_loaded",
    "slate_scores", "validate_request",
]


def default_feedback_db(bundle: str | Path) -> str:
    """Where feedback goes when no path is configured: $PREFMINE_FEEDBACK_DB, else feedback.sqlite beside the
    bundle directory (shared by the bundle versions rolled in there, so a rollout keeps the log); for a bundle
    URI, in the bundle cache folder of the node that deploys (where `prefmine serve` fetched bundles to before
    the replicas fetched them themselves). Several nodes need a shared store: a postgresql:// DSN."""
    from prefmine.store import StoreConfig, is_uri

    if os.environ.get("PREFMINE_FEEDBACK_DB"):
        return os.environ["PREFMINE_FEEDBACK_DB"]
    if is_uri(bundle):
        return str(Path(StoreConfig().cache_dir).resolve() / "feedback.sqlite")
    return str(Path(bundle).resolve().parent / "feedback.sqlite")


def code_version() -> str:
    """A hash of the serving code (serve/ and prefmine/ sources): the deployments' code version."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted([*root.joinpath("serve").rglob("*.py"), *root.joinpath("prefmine").rglob("*.py")]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _same_code(deployment):
    """The deployment with the serving code's hash as its version. `serve.run` gives every deployment a random
    code version otherwise, so redeploying for a new bundle (serve.run.rollout) would restart every replica;
    with it, only the user_config changes and Serve reconfigures the running replicas in place. ``version`` is
    an internal option of Deployment.options in this Ray (ray 2.60), hence ``_internal``."""
    return deployment.options(version=code_version(), _internal=True)


# no per-request access log line ("CALL ... OK") from every replica: written, tailed and streamed to the driver for
# each hop, it is a measurable part of a request's time (bench/README.md, serving latency); errors and warnings are
# still logged
LOGGING = {"enable_access_log": False}
BUILD_ARGS = {"bundle", "version", "candidates", "feedback_db", "api_keys_file", "require_api_key", "rate_limit", "rate_burst",
              "tls", "extra_keys", "tombstones", "experiment", "live_catalog", "placement", "ads"}


def check_bundle(bundle: Path) -> None:
    """Fail fast, naming what is missing, before any replica tries (and retries) to load the bundle."""
    if not bundle.is_dir():
        raise FileNotFoundError(f"bundle: {bundle} is not a directory")
    missing = missing_parts(bundle)  # the bundle's one definition of finished (prefmine.bundle)
    if missing:
        raise FileNotFoundError(f"bundle: {bundle} lacks {', '.join(missing)} (not a finished model bundle)")
    from prefmine.integrity import verify

    verify(bundle)  # every file as the manifest lists it (and signed, when the server holds a bundle key)
    check_pseudonym_key(bundle)


def check_location(location: str) -> str:
    """``check_bundle`` for a bundle URI, without downloading it (the replicas fetch it, each into its node's
    cache): finished (every required part), the manifest's version, names and signature, every listed file
    there with its size, the pseudonymisation key. Returns the version the location holds."""
    from prefmine.store import check_published

    manifest = check_published(location)
    missing = missing_parts(location)
    if missing:
        raise FileNotFoundError(f"bundle: {location} lacks {', '.join(missing)} (not a finished model bundle)")
    check_pseudonym_key(manifest=manifest)
    return str(manifest["version"])


def checked_location(bundle: str | Path) -> tuple[str, str]:
    """(location, version) of the bundle ``bundle`` names now, checked (check_bundle, or check_location for a
    URI): a URI as given, a directory resolved (symlinks followed), as the replicas are told it."""
    from prefmine.store import is_uri
    from serve.served import manifest_version

    if is_uri(str(bundle)):
        return str(bundle), check_location(str(bundle))
    path = Path(bundle).resolve()
    check_bundle(path)
    return str(path), manifest_version(path)


def arm_versions(experiment) -> tuple[Any, list[dict]]:
    """The experiment with each version arm's bundle resolved to its checked location, and those versions as
    user_config's ``pinned`` list (serve.served.pinned_refs): every replica holds them beside the served version,
    so an arm stays on its version while other versions are rolled in. ValueError naming the arm's field."""
    from dataclasses import replace

    pinned: dict[str, str] = {}
    arms = []
    for i, arm in enumerate(experiment.arms):
        if arm.bundle is not None:
            try:
                location, version = checked_location(arm.bundle)
            except (OSError, ValueError) as e:
                raise ValueError(f"experiment.arms[{i}].bundle: arm {arm.name!r}: {e}") from None
            pinned[location] = version
            arm = replace(arm, bundle=location)
        arms.append(arm)
    return replace(experiment, arms=tuple(arms)), [{"bundle": b, "version": v} for b, v in pinned.items()]


def check_pseudonym_key(bundle: Path | None = None, manifest: dict | None = None) -> None:
    """Refuse to serve with another pseudonymisation key than the data was prepared with: every user would
    silently look unknown and get cold-start answers. Reads the manifest of ``bundle``, or ``manifest``."""
    from prefmine.bundle import read_manifest
    from prefmine.data.privacy import DEMO_FINGERPRINT, key_fingerprint, load_key

    manifest = read_manifest(bundle) if manifest is None else manifest
    expected = manifest.get("dataset", {}).get("pseudonymisation", {}).get("key_fingerprint")
    actual = key_fingerprint(load_key(allow_demo=expected == DEMO_FINGERPRINT))
    if expected and expected != actual:
        raise ValueError(f"PREFMINE_PSEUDONYM_KEY: its fingerprint {actual} differs from the key the bundle's data "
                         f"was prepared with ({expected}); set the same key for serving")


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder. Args:

    ``bundle`` (required): model bundle directory, or a URI (``s3://...``, any pyarrow filesystem) every replica
    fetches into its own node's bundle cache (prefmine.store.fetch); ``version``: the version ``bundle`` must hold
    (``prefmine serve`` passes the one it checked; a replica that finds another refuses to start);
    ``candidates``: ranker candidates the policy chooses from
    (default 100); ``feedback_db``: SQLite file or postgresql:// DSN RecordFeedback appends to (default:
    ``default_feedback_db``);
    ``api_keys_file``: the server's hashed API keys (serve/auth.py; required unless ``require_api_key: false``,
    which turns authentication off: demo only); ``rate_limit``/``rate_burst``: each key's requests a second and
    burst per ingress replica (0: no limit); ``extra_keys``: key-file lines accepted besides the file's
    (``prefmine serve``'s own probe key); ``tls``: ``{cert_file, key_file, client_ca_file}`` for the
    direct-ingress gRPC server (serve/tls.py); ``tombstones``: the list of erased pseudonyms
    (prefmine/data/tombstones.py) each ingress replica re-reads when it changes (default: $PREFMINE_TOMBSTONES,
    else beside a SQLite feedback db); ``experiment``: an A/B experiment ``{name, salt, arms: [{name, weight,
    bundle, policy}]}`` (prefmine.experiments): an arm's users get their Recommend slates from the arm's bundle
    version (a directory or URI, held by every replica whatever is rolled in) ordered by the arm's policy
    (prefmine.serving.arms);
    ``live_catalog``: ``{interval_s, page, max_new_items, embed_batch, new_item_popularity_quantile,
    cold_start_new_slots}`` (prefmine.serving.live_catalog.LiveCatalogConfig), how often each ingress replica
    polls the feedback store's catalogue change log, how many new items (not in the bundle) it embeds and serves,
    and where new items stand in popularity answers; ``placement``:
    ``{DEPLOYMENT: {num_replicas, max_replicas_per_node, resources}}`` (prefmine.serving.placement), where each
    deployment's replicas run on a multi-node cluster (`prefmine serve --placement`); ``ads``: Rank's ad
    auction (prefmine.ads.config.AdsConfig: ``reserves`` per slot, ``pacing_tolerance``, ``freq_cap``,
    ``freq_window_s``, ``hold_ttl_s``).

    Used by ``serve.run(build_app({...}))`` and by ``serve deploy serve/config.yaml`` (import_path
    ``serve.app:build_app``). Unknown keys are an error.
    """
    unknown = set(args) - BUILD_ARGS
    if unknown:
        raise ValueError(f"unknown application args: {sorted(unknown)} (allowed: {sorted(BUILD_ARGS)})")
    if "bundle" not in args:
        raise ValueError("application args: 'bundle' (a model bundle directory or URI) is required")
    from prefmine.store import is_uri

    pinned = args.get("version")
    if is_uri(args["bundle"]):  # each replica fetches it into its own node's cache (serve.served)
        bundle = str(args["bundle"])
        found = pinned = check_location(bundle)
        if args.get("version") and str(args["version"]) != found:
            raise ValueError(f"bundle: {bundle} holds version {found}, not {args['version']} (the location moved "
                             "on): deploy the version it holds")
    else:
        bundle = Path(str(args["bundle"])).expanduser().resolve()
        check_bundle(bundle)
    candidates = int(args.get("candidates", DEFAULT_CANDIDATES))
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    require = args.get("require_api_key", True)
    if not isinstance(require, bool):
        raise ValueError(f"require_api_key must be true or false, got {require!r}")
    keys_file = args.get("api_keys_file")
    keys_file = str(Path(str(keys_file)).expanduser().resolve()) if keys_file else None
    auth = AuthConfig(keys_file=keys_file, required=require,
                      rate_per_s=float(args.get("rate_limit", AuthConfig.rate_per_s)),
                      burst=int(args.get("rate_burst", AuthConfig.burst)),
                      extra_keys=tuple(args.get("extra_keys") or ()))
    if auth.required:
        from serve.auth import load_keys

        load_keys(auth.keys_file)  # fail here, naming the file and line, rather than in every ingress replica
    from dataclasses import asdict

    from prefmine.ads.config import AdsConfig
    from prefmine.feedback import resolve_location
    from prefmine.serving.live_catalog import LiveCatalogConfig
    from serve.tls import TlsConfig

    tls = TlsConfig(**(args.get("tls") or {}))  # checked here too: missing files named before any replica starts
    feedback_db = resolve_location(args.get("feedback_db") or default_feedback_db(bundle))  # a path or a DSN
    from prefmine.data.tombstones import resolve as resolve_tombstones

    tombstones = resolve_tombstones(args.get("tombstones"), feedback_db)
    from prefmine.serving.arms import servable_experiment

    # checked here, naming the field, before any replica starts; version arms' bundles resolved and checked
    experiment, arm_pins = (arm_versions(servable_experiment(args["experiment"])) if args.get("experiment")
                            else (None, []))
    # the bundle version travels as user_config, not as constructor args: a new one is a lightweight update that
    # every replica takes in `reconfigure` without restarting (serve/served.py: the zero-downtime rollout); so do
    # the versions that A/B arms pin
    version = BundleRef.of({"bundle": str(bundle), "version": pinned}).config()
    if arm_pins:
        version["pinned"] = arm_pins
    from prefmine.serving.placement import placement_from

    placement = placement_from({"deployments": args.get("placement") or {}})  # checked before any replica

    def versioned(deployment):
        placed = placement.options_for(deployment.name, deployment.ray_actor_options)
        return _same_code(deployment.options(user_config=version, logging_config=LOGGING, **placed))

    return versioned(RecommenderIngress).bind(
        versioned(RankerDeployment).bind(),
        versioned(EncoderDeployment).bind(),
        candidates=candidates,
        feedback_db=feedback_db,
        tombstones=str(tombstones) if tombstones else None,
        auth={"keys_file": auth.keys_file, "required": auth.required, "rate_per_s": auth.rate_per_s,
              "burst": auth.burst, "extra_keys": list(auth.extra_keys)},
        tls=tls.as_dict(),
        experiment=experiment.to_dict() if experiment else None,
        live_catalog=asdict(LiveCatalogConfig(**(args.get("live_catalog") or {}))),  # checked before any replica
        ads=asdict(AdsConfig.of(args.get("ads"))),  # checked before any replica
    )
