"""`prefmine serve`: run the Serve application for one bundle until SIGINT/SIGTERM.

``run_serve(bundle, grpc_port, api_keys_file=..., feedback_db=...)`` starts a local Ray (2 CPUs, one thread per worker, with the dashboard) unless
an address is given or a cluster started with ``ray start`` is found, deploys ``serve.app.build_app``, waits
until a real Recommend call over gRPC on 127.0.0.1:PORT answers, prints one line containing ``ready``, and on
SIGINT/SIGTERM shuts Serve (and the Ray it started) down and returns 0. SIGHUP rolls in the bundle that
``bundle`` names by then (``rollout``: point a symlink at a new version's directory, then ``kill -HUP``) without
downtime. ``bundle`` may be a URI (``s3://bucket/prefix``, any pyarrow filesystem): it is checked here from its
manifest and a listing, not downloaded; the app args carry the URI and the version checked, and every replica
fetches the bundle into its own node's cache (serve.served), so no node needs the driver's disk; SIGHUP then
rolls in the version published there by then. ``metrics_port`` fixes the port where
the Ray it starts serves Prometheus metrics (serve/metrics.py lists prefmine's own).

Direct ingress (``direct_port``, ``prefmine serve --direct-port``): Ray Serve's own RAY_SERVE_ENABLE_DIRECT_INGRESS
mode, in which the ingress replica runs a gRPC server of its own, so a client skips the proxy actor and one
actor hop (bench.serve_latency, 2 CPUs: p50 at c=1 and q/s at c=32 in bench/results/serve_latency.json). The
first ingress replica listens on ``direct_port``, further ones (autoscaling) on the next free ports up to
``direct_port + 63``; the proxy port keeps working beside it. Every check is the same (the same servicer
functions, API keys, validation, size limits); what a client loses is the proxy's choice among ingress
replicas, so put a load balancer over the direct ports when the ingress has several replicas. Serve reads the
switch when its modules are imported, in the controller and the replicas: a local Ray started here gets it; a
``ray start`` cluster needs ``direct_ingress_env(PORT)`` in the environment of ``ray start`` on every node.

Closed by default: every RPC needs a key of ``api_keys_file`` (or $PREFMINE_API_KEYS_FILE; hashed keys with
names, scopes and a per-key rate limit, re-read by the replicas when the file changes: serve/auth.py), and without
one the server refuses to start unless ``insecure`` (``--insecure``: authentication off, for the demo; said on
its first line). Serve's gRPC proxy accepts messages of at most MAX_REQUEST_BYTES (4 MiB; Serve's own
RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, put in the environment of the Ray started here), server reflection is off
unless ``reflection``, and with ``tls`` (serve/tls.py) the direct-ingress port speaks TLS, optionally requiring
client certificates; Serve's proxy port stays plain text (terminate TLS in front of it:
docs/serving-security.md). ``prefmine serve`` checks readiness with a random key of its own, known only to this
process (its hash is passed to the ingress beside the file's keys, scope Recommend and ModelInfo). Requests that
run longer than ``request_timeout_s`` (30 s) get DEADLINE_EXCEEDED from the proxy.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("prefmine.serve")

READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 30.0
PROBE_USER = "__prefmine_readiness_probe__"
# Ray Serve's request path on few cores (bench.serve_latency, 2 CPUs): user code and the handles' router run on
# the replica's own event loop instead of one thread each, which saves thread hand-offs (GIL, 5 ms switch
# interval) on every hop: c=1 p50 27 -> 22 ms, c=32 83 -> 116 q/s. Serve reads them when its modules are imported
# in each process (proxy and controller included), so they are put in this process's environment before a local
# Ray starts (its processes inherit it) and in the runtime_env (replicas on a cluster; serve/config.yaml too).
# RAY_SERVE_GRPC_MAX_MESSAGE_SIZE: the largest message Serve's gRPC servers (proxy, direct ingress) accept; Serve's
# default is 2 GiB, read into memory before serve.wire's 4 MiB check could run (gRPCOptions has no such field).
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
             "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(4 * 1024 * 1024)}  # = serve.wire.MAX_REQUEST_BYTES
RUNTIME_ENV = {
    "env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **SERVE_ENV}
}


DIRECT_INGRESS_REPLICA_PORTS = 64  # ports direct_port .. direct_port + 63: one per ingress replica


def direct_ingress_env(direct_port: int) -> dict[str, str]:
    """The environment that turns Serve's direct ingress on with the ingress replicas' gRPC servers on
    ``direct_port`` and up. An ingress replica stopping holds its port for a draining period first (Serve's
    default is 30 s, for cloud load balancers to deregister it); 2 s is enough on one machine."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(direct_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(direct_port + DIRECT_INGRESS_REPLICA_PORTS - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def free_port() -> int:
    """A TCP port that was free a moment ago (for the HTTP proxy when none is asked for)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect_or_start_ray(address: str | None, metrics_port: int | None = None,
                          direct_port: int | None = None) -> bool:
    """Connect to ``address`` (or a ``ray start`` cluster found locally) or start a local Ray.

    ``metrics_port``: where the local Ray's metrics agent serves Prometheus metrics (a cluster's nodes set theirs
    with ``ray start --metrics-export-port``). Returns True when this process started Ray (and so must shut it
    down).
    """
    import os

    for name, value in SERVE_ENV.items():  # before ray.init: the local Ray's processes inherit them
        os.environ.setdefault(name, value)
    if direct_port:
        os.environ.update(direct_ingress_env(direct_port))
    import ray
    from ray._private import services

    try:
        existing = services.canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - a bad or stale address: let ray.init report it below
        existing = address
    if existing is not None:
        ray.init(address=existing, runtime_env=RUNTIME_ENV, logging_level=logging.WARNING)
        print(f"prefmine serve: connected to Ray at {existing}", flush=True)
        if metrics_port:
            print("prefmine serve: --metrics-port is ignored on an existing cluster (its nodes export metrics "
                  "on their own --metrics-export-port)", flush=True)
        print("prefmine serve: on an existing cluster, start every node's Ray with "
              + " ".join(f"{k}={v}" for k, v in SERVE_ENV.items())
              + " in its environment (Serve's proxy reads them when it starts)", flush=True)
        print("prefmine serve: where Serve already runs on the cluster, its proxies keep the gRPC port and "
              "proxy_location they were started with (serve shutdown first to change them)", flush=True)
        if direct_port:
            print("prefmine serve: --direct-port on an existing cluster needs the nodes started with "
                  + " ".join(f"{k}={v}" for k, v in direct_ingress_env(direct_port).items()), flush=True)
        return False
    extra = {"_metrics_export_port": int(metrics_port)} if metrics_port else {}
    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        runtime_env=RUNTIME_ENV,
        logging_level=logging.WARNING,
        **extra,
    )
    url = getattr(ctx, "dashboard_url", None)
    print(
        f"prefmine serve: started local Ray; dashboard http://{url}"
        if url
        else "prefmine serve: started local Ray (no dashboard)",
        flush=True,
    )
    if metrics_port:
        print(f"prefmine serve: Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics", flush=True)
    return True


def wait_ready(addr: str, timeout_s: float = READY_TIMEOUT_S, api_key: str | None = None) -> float:
    """Poll Recommend (cold-start probe) and ModelInfo over gRPC until both answer; returns the seconds taken."""
    import grpc

    from serve.client import model_info, recommend

    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout_s:
        try:
            recommend(addr, PROBE_USER, 1, timeout=10.0, api_key=api_key)
            model_info(addr, timeout=30.0, api_key=api_key)
            return time.monotonic() - t0
        except grpc.RpcError as e:  # proxy not up yet, app not routed yet, ...
            last = e
            time.sleep(0.5)
    raise TimeoutError(f"no answer from Recommend on {addr} within {timeout_s:.0f} s: {last}")


def wait_listening(host: str, port: int, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Wait until something accepts TCP connections on host:port; returns the seconds taken."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return time.monotonic() - t0
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def _location(bundle: str) -> str:
    """The bundle as the replicas are told it: a URI as given, a directory resolved (symlinks followed)."""
    from prefmine.store import is_uri

    return str(bundle) if is_uri(bundle) else str(Path(bundle).resolve())


def _checked_version(bundle: str) -> str:
    """Check the bundle ``bundle`` names now (serve.app.checked_location) and return its version."""
    from serve.app import checked_location

    return checked_location(bundle)[1]


def _bundle_args(bundle: str, version: str) -> dict:
    """The app args naming the bundle: a directory as today; a URI with the version checked here, which every
    replica must find there when it fetches the bundle into its node's cache (serve.served.check_bundle_files)."""
    from prefmine.store import is_uri

    if is_uri(bundle):
        return {"bundle": str(bundle), "version": version}
    return {"bundle": _location(bundle)}


def run_serve(bundle: str, grpc_port: int, http_port: int | None = None, address: str | None = None,
              api_keys_file: str | None = None, feedback_db: str | None = None,
              request_timeout_s: float = REQUEST_TIMEOUT_S, metrics_port: int | None = None,
              direct_port: int | None = None, insecure: bool = False, reflection: bool = False,
              tls: dict | None = None, rate_limit: float | None = None, rate_burst: int | None = None,
              tombstones: str | None = None, experiment: str | None = None, placement: str | None = None,
              ads: dict | None = None) -> int:
    """Serve ``bundle`` over gRPC on ``grpc_port`` (and, with ``direct_port``, straight from the ingress replica
    there) until SIGINT/SIGTERM; returns the exit code (2: bad arguments, refused before Ray starts).

    ``insecure``: no API keys (authentication off); without it a key file is required. ``reflection``: gRPC server
    reflection on. ``tls``: ``{"cert_file", "key_file", "client_ca_file"}`` of the direct-ingress port.
    ``rate_limit``/``rate_burst``: each key's requests a second and burst per ingress replica (0: no limit).
    ``tombstones``: the list of erased pseudonyms (default: $PREFMINE_TOMBSTONES, else beside the feedback db).
    ``experiment``: a YAML/JSON file with the A/B experiment to run (prefmine.experiments.load_experiment: the
    experiment itself or a Serve config carrying it); `prefmine experiments report --config` takes the same file.
    ``ads``: Rank's ad auction settings (prefmine.ads.config.AdsConfig fields; the config tree's `ads` section)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        version = _checked_version(bundle)
    except FileNotFoundError as e:
        print(f"prefmine serve: --{e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"prefmine serve: {e}", file=sys.stderr)
        return 2
    if not 1 <= grpc_port <= 65535:
        print(f"prefmine serve: --grpc-port must be in 1..65535, got {grpc_port}", file=sys.stderr)
        return 2
    if direct_port is not None and not (
            1 <= direct_port <= 65536 - DIRECT_INGRESS_REPLICA_PORTS
            and not direct_port <= grpc_port < direct_port + DIRECT_INGRESS_REPLICA_PORTS):
        print(f"prefmine serve: --direct-port must leave {DIRECT_INGRESS_REPLICA_PORTS} ports below 65536 and "
              f"not overlap --grpc-port, got {direct_port}", file=sys.stderr)
        return 2
    import os
    import secrets

    from serve.auth import AuthConfig, hash_key, load_keys
    from serve.tls import TlsConfig

    api_keys_file = api_keys_file or os.environ.get("PREFMINE_API_KEYS_FILE") or None
    probe_key = None
    if api_keys_file and insecure:
        print("prefmine serve: --insecure and --api-keys-file exclude each other", file=sys.stderr)
        return 2
    try:
        tls_config = TlsConfig(**(tls or {}))
        if tls_config.enabled and not direct_port:
            raise ValueError("tls: --tls-cert applies to the direct-ingress port: give --direct-port (for the "
                             "proxy's --grpc-port, terminate TLS in front of it: docs/serving-security.md)")
        auth = AuthConfig(keys_file=api_keys_file, required=not insecure,
                          **({"rate_per_s": float(rate_limit)} if rate_limit is not None else {}),
                          **({"burst": int(rate_burst)} if rate_burst is not None else {}))
        if api_keys_file:
            load_keys(api_keys_file)
        if experiment:
            import yaml

            from prefmine.experiments import load_experiment
            from prefmine.serving.arms import servable_experiment
            from serve.app import arm_versions

            try:
                checked = servable_experiment(load_experiment(experiment))
                arm_versions(checked)  # each version arm's bundle checked now, naming the arm
                experiment_config = checked.to_dict()
            except (ValueError, yaml.YAMLError) as e:
                raise ValueError(f"--experiment {experiment}: {e}") from None
        import yaml

        from prefmine.serving.placement import load_placement

        try:
            placed = load_placement(placement)
        except (ValueError, yaml.YAMLError) as e:
            raise ValueError(f"--placement {placement}: {e}") from None
    except (OSError, ValueError) as e:
        msg = str(e)
        if "api_keys_file is required" in msg:
            msg = ("no API keys: give --api-keys-file FILE (or $PREFMINE_API_KEYS_FILE; make keys with "
                   "`prefmine serve keys add`), or --insecure to serve without authentication (demo only)")
        print(f"prefmine serve: {msg}", file=sys.stderr)
        return 2
    if insecure:
        print("prefmine serve: API-key authentication is OFF (--insecure): every caller is accepted", flush=True)
    from prefmine.feedback import resolve_location
    from serve.app import default_feedback_db

    # the feedback log stays where it is across rollouts (the default: beside the first bundle's directory)
    app_args = {**_bundle_args(bundle, version), "require_api_key": auth.required,
                "feedback_db": resolve_location(feedback_db or default_feedback_db(_location(bundle))),
                "rate_limit": auth.rate_per_s, "rate_burst": auth.burst}
    if tombstones:  # a file, or a postgresql:// DSN (the table), as given
        from prefmine.data.tombstones import resolve as resolve_tombstones

        app_args["tombstones"] = str(resolve_tombstones(tombstones))
    if api_keys_file:
        app_args["api_keys_file"] = api_keys_file
        # readiness and rollout probes call with a key only this process knows; the ingress holds its hash
        probe_key = secrets.token_urlsafe(32)
        app_args["extra_keys"] = [f"prefmine-serve-probe Recommend,ModelInfo {hash_key(probe_key)}"]
    if tls_config.enabled:
        app_args["tls"] = tls_config.as_dict()
    if experiment:
        app_args["experiment"] = experiment_config
    if ads is not None:
        app_args["ads"] = ads
    if placed.deployments:
        app_args["placement"] = placed.deployments_dict()

    stop = threading.Event()
    ready = threading.Event()
    reload = threading.Event()

    def _on_signal(signum, _frame):
        print(f"prefmine serve: {signal.Signals(signum).name} received, shutting down", flush=True)
        stop.set()
        if not ready.is_set():  # still starting: abort the start-up
            raise KeyboardInterrupt

    def _install() -> dict:
        handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())
        return handlers

    previous = _install()
    t0 = time.monotonic()
    started_ray = False
    try:
        from ray import serve
        from ray.serve.config import gRPCOptions

        from serve.app import APP_NAME, GRPC_SERVICER, LOGGING, build_app

        started_ray = _connect_or_start_ray(address, metrics_port, direct_port)
        _install()  # ray.init replaces the SIGTERM handler with its own
        serve.start(
            proxy_location=placed.proxy_location,
            http_options={"host": "127.0.0.1", "port": http_port or free_port()},
            logging_config=LOGGING,  # the proxy's and controller's: no access log line per request
            grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER],
                                     request_timeout_s=request_timeout_s, enable_reflection=reflection),
        )
        serve.run(build_app(app_args), name=APP_NAME, route_prefix=f"/{APP_NAME}")
        addr = f"127.0.0.1:{grpc_port}"
        wait_ready(addr, api_key=probe_key)
        direct = ""
        if direct_port and tls_config.enabled:  # the graph answered through the proxy; the TLS port is listening
            wait_listening("127.0.0.1", direct_port)
            direct = f", direct ingress on 127.0.0.1:{direct_port} (TLS"
            direct += ", client certificates required)" if tls_config.client_ca_file else ")"
        elif direct_port:
            wait_ready(f"127.0.0.1:{direct_port}", api_key=probe_key)
            direct = f", direct ingress on 127.0.0.1:{direct_port}"
        print(
            f"prefmine serve: ready on {addr} (gRPC){direct}, bundle {version}, "
            f"{time.monotonic() - t0:.1f} s to ready",
            flush=True,
        )
        ready.set()
        while not stop.wait(0.5):
            if reload.is_set():
                reload.clear()
                app_args = rollout(bundle, app_args, addr, probe_key)
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # noqa: BLE001 - a CLI: one clear line, details in the log
        logger.exception("serve failed")
        print(f"prefmine serve: failed: {type(e).__name__}: {e}{_deployment_errors()}", file=sys.stderr)
        return 1
    finally:
        _shutdown(started_ray)
        for s, h in previous.items():
            signal.signal(s, h)


class RolloutRefused(RuntimeError):
    """The replicas finished the update but did not switch: some part of the new version did not load."""


def _app_settled() -> bool:
    """The application is RUNNING and every deployment HEALTHY: no replica is still being updated."""
    from ray import serve

    from serve.app import APP_NAME

    app = serve.status().applications.get(APP_NAME)
    return (app is not None and str(app.status).endswith("RUNNING")
            and all(str(d.status).endswith("HEALTHY") and not str(d.status).endswith("UNHEALTHY")
                    for d in app.deployments.values()))


def rollout(bundle: str, app_args: dict, addr: str, api_key: str | None) -> dict:
    """Roll in the bundle ``bundle`` names now (SIGHUP): a symlink that was pointed at a new version's directory,
    a directory that now holds another version, or a URI where another version was published. Redeploys the application with the new version as every
    deployment's user_config (a lightweight update: replicas load it beside the old one and switch, no restart,
    no failed request; serve/served.py), waits until ModelInfo reports it, and returns the new app args.

    Anything wrong with the new bundle keeps the old version serving: what ``check_bundle`` catches (missing
    parts, another pseudonymisation key) before anything is deployed; a version that passes the checks but does
    not load (broken weights) is refused by the replicas themselves (serve.served.adopt), which is seen here as
    an update that finished (every deployment healthy again) while ModelInfo still reports the old version; the
    application's config is then deployed back to the old version, so that a replica started later gets the
    version that is actually served. Either way the line printed names the version ModelInfo reports."""
    from ray import serve

    from serve.app import APP_NAME, build_app
    from serve.client import model_info

    t0 = time.monotonic()
    target = _location(bundle)
    deployed = False
    try:
        version = _checked_version(bundle)
        new_args = {**app_args, **_bundle_args(bundle, version)}
        serve.run(build_app(new_args), name=APP_NAME, route_prefix=f"/{APP_NAME}", blocking=False)
        deployed, t_deploy, settled = True, time.monotonic(), 0
        while (got := model_info(addr, timeout=30.0, api_key=api_key).bundle_version) != version:
            # settled three polls in a row, a few seconds after the deploy: the update is over and did not switch
            settled = settled + 1 if time.monotonic() - t_deploy > 5.0 and _app_settled() else 0
            if settled >= 3:
                raise RolloutRefused(f"the replicas did not switch to {version} (it did not load; the replicas' "
                                     f"logs say why); ModelInfo reports {got}")
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise TimeoutError(f"ModelInfo did not report {version} within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
    except Exception as e:  # noqa: BLE001 - keep serving what runs now
        serving = app_args["bundle"]
        if deployed:  # Serve's target is the new version: point it back at the one being served
            try:
                serve.run(build_app(app_args), name=APP_NAME, route_prefix=f"/{APP_NAME}", blocking=False)
                now = model_info(addr, timeout=30.0, api_key=api_key).bundle_version
                serving = f"{app_args['bundle']} (ModelInfo: {now})"
            except Exception as e2:  # noqa: BLE001
                serving = f"{app_args['bundle']}? (rolling the config back failed: {type(e2).__name__}: {e2})"
        print(f"prefmine serve: rollout of {target} failed after {time.monotonic() - t0:.1f} s, still serving "
              f"{serving}: {type(e).__name__}: {e}", flush=True)
        return app_args
    print(f"prefmine serve: rolled out bundle {version} ({target}) in {time.monotonic() - t0:.1f} s", flush=True)
    return new_args


def _deployment_errors() -> str:
    """The last line of each unhealthy deployment's status message (the replica's exception), if any."""
    try:
        from ray import serve

        from serve.app import APP_NAME

        app = serve.status().applications.get(APP_NAME)
        if app is None:
            return ""
        out = []
        for name, dep in app.deployments.items():
            lines = [x for x in (dep.message or "").strip().splitlines() if x.strip()]
            if str(dep.status).endswith("UNHEALTHY") or (lines and "Traceback" in dep.message):
                out.append(f"\n  {name}: {lines[-1] if lines else dep.status}")
        return "".join(out)
    except Exception:  # noqa: BLE001 - best effort
        return ""


def _shutdown(started_ray: bool) -> None:
    """Shut Serve down (and Ray, if this process started it); never raises."""
    try:
        import ray
        from ray import serve

        if ray.is_initialized():
            if started_ray:
                serve.shutdown()
            else:  # someone else's cluster: remove only our application
                from serve.app import APP_NAME

                serve.delete(APP_NAME)
            ray.shutdown()
        print("prefmine serve: stopped", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"prefmine serve: error during shutdown: {e}", file=sys.stderr)
