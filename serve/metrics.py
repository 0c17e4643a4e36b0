"""Prometheus metrics of the gRPC service, exported through Ray's metrics system.

The ingress records, per replica (``ray.serve.metrics`` adds the ``deployment``, ``replica`` and ``application``
tags itself):

=============================================  =========  ===============================================
metric (as Prometheus shows it)                type       tags
=============================================  =========  ===============================================
``ray_prefmine_grpc_requests_total``           counter    ``rpc``, ``code`` (gRPC status name, OK included)
``ray_prefmine_grpc_errors_total``             counter    ``rpc``, ``code`` (every code but OK)
``ray_prefmine_grpc_request_latency_ms``       histogram  ``rpc`` (time inside the ingress, all codes)
``ray_prefmine_model_bundle``                  gauge      ``bundle_version`` (1 while a replica serves it, then 0)
``ray_prefmine_feedback_events_total``         counter    ``event`` (view/click/cart/buy/rate, committed)
``ray_prefmine_replica_retries_total``         counter    ``target`` (deployment whose replica died in a call)
``ray_prefmine_feedback_read_failures_total``  counter    (none; the feedback log did not answer a history read)
``ray_prefmine_arm_impressions_total``         counter    ``experiment``, ``arm`` (Recommend answers logged)
``ray_prefmine_arm_clicks_total``              counter    ``experiment``, ``arm`` (click, cart and buy events
                                                          naming an impression, committed)
``ray_prefmine_arm_purchases_total``           counter    ``experiment``, ``arm`` (buy events naming an
                                                          impression, committed)
=============================================  =========  ===============================================

The arm counters exist only while the server runs an experiment; an event's arm is its user's (assignment is
stable, so it is the arm of the impression it names while the experiment's salt is unchanged). They count events,
as the other counters do: `prefmine experiments report` counts clicked and purchased impressions instead, each
once however many events answer it, with intervals.

Every Ray node's metrics agent serves them, beside Ray's and Serve's own (``ray_serve_grpc_request_latency_ms``
at the proxy, ``ray_serve_deployment_processing_latency_ms`` per deployment, replica counts), at
``http://NODE:METRICS_EXPORT_PORT/metrics``: ``prefmine serve --metrics-port PORT`` fixes that port for the Ray
it starts; on a cluster it is ``ray start --metrics-export-port``, and Ray writes a Prometheus service-discovery
file (``/tmp/ray/prom_metrics_service_discovery.json``) listing every node's endpoint. Ray reports new values
every few seconds (``metrics_report_interval_ms``), so a scrape lags the calls by that much.
"""

from __future__ import annotations

import time
from collections import Counter as _Tally

from prefmine.experiments import CLICK_EVENTS, PURCHASE_EVENTS

# request latency buckets in ms: a cheap cold-start answer (~1 ms) to the proxy's 30 s request timeout
GAUGE_REFRESH_S = 5.0
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000]


class ServiceMetrics:
    """The ingress's metrics; one instance per replica, created in the replica (metrics are per process)."""

    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "prefmine_grpc_requests", description="gRPC calls answered by the ingress, by RPC and status code.",
            tag_keys=("rpc", "code"))
        self.errors = metrics.Counter(
            "prefmine_grpc_errors", description="gRPC calls answered with a status other than OK.",
            tag_keys=("rpc", "code"))
        self.latency = metrics.Histogram(
            "prefmine_grpc_request_latency_ms", description="Time the ingress spent on a call, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("rpc",))
        self.feedback = metrics.Counter(
            "prefmine_feedback_events", description="Feedback events committed to the feedback log, by type.",
            tag_keys=("event",))
        self.retries = metrics.Counter(
            "prefmine_replica_retries", description="Calls retried because the replica they reached died.",
            tag_keys=("target",))
        self.read_failures = metrics.Counter(
            "prefmine_feedback_read_failures",
            description="Requests answered from the bundle's history alone because the feedback log did not answer.")
        arm_tags = ("experiment", "arm")
        self.arm_impressions = metrics.Counter(
            "prefmine_arm_impressions", description="Recommend answers logged, by A/B arm.", tag_keys=arm_tags)
        self.arm_clicks = metrics.Counter(
            "prefmine_arm_clicks", description="Click, cart and buy events naming an impression, by A/B arm.",
            tag_keys=arm_tags)
        self.arm_purchases = metrics.Counter(
            "prefmine_arm_purchases", description="Buy events naming an impression, by A/B arm.", tag_keys=arm_tags)
        self.bundle = metrics.Gauge(
            "prefmine_model_bundle", description="1 for the bundle version this replica serves.",
            tag_keys=("bundle_version",))
        self._version: str | None = None
        self._version_set = 0.0

    def serving(self, version: str, previous: str | None = None) -> None:
        """This replica now serves ``version`` (a rollout: ``previous`` goes to 0)."""
        if previous is not None and previous != version:
            self.bundle.set(0, tags={"bundle_version": str(previous)})
        self._version = str(version)
        self._refresh_version(force=True)

    def _refresh_version(self, force: bool = False) -> None:
        """Set the version gauge again every few seconds: Ray's exporter drops a gauge nobody has set lately."""
        now = time.monotonic()
        if self._version is not None and (force or now - self._version_set > GAUGE_REFRESH_S):
            self.bundle.set(1, tags={"bundle_version": self._version})
            self._version_set = now

    def observe(self, rpc: str, code: str, seconds: float) -> None:
        """One answered call: its RPC, the gRPC status name it got ("OK", "INVALID_ARGUMENT", ...), its time."""
        tags = {"rpc": rpc, "code": code}
        self.requests.inc(1, tags=tags)
        if code != "OK":
            self.errors.inc(1, tags=tags)
        self.latency.observe(1e3 * seconds, tags={"rpc": rpc})
        self._refresh_version()

    def replica_retry(self, target: str) -> None:
        """A call to deployment ``target`` is being retried: its replica died under it."""
        self.retries.inc(1, tags={"target": target})

    def feedback_stored(self, events) -> None:
        """Events that were just committed (anything with an ``event`` attribute naming its type)."""
        for event, n in _Tally(ev.event for ev in events).items():
            self.feedback.inc(n, tags={"event": event})


    def feedback_read_failed(self) -> None:
        """A request's history was built without the feedback log's events (the store did not answer)."""
        self.read_failures.inc(1)

    def arm_impression(self, experiment: str, arm: str) -> None:
        """One Recommend answer of ``arm`` was logged."""
        self.arm_impressions.inc(1, tags={"experiment": experiment, "arm": arm})

    def arm_feedback(self, experiment: str, arms_and_events) -> None:
        """Committed events that name an impression, as (arm, event name) pairs."""
        for (arm, event), n in _Tally(arms_and_events).items():
            tags = {"experiment": experiment, "arm": arm}
            if event in CLICK_EVENTS:
                self.arm_clicks.inc(n, tags=tags)
            if event in PURCHASE_EVENTS:
                self.arm_purchases.inc(n, tags=tags)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of a Prometheus text exposition: {(name, frozenset of (label, value)): value}.

    Enough of the format for reading Ray's endpoint back (tests, benchmarks, a quick look from a shell); label
    values with escaped quotes are not handled.
    """
    import re

    out: dict[tuple[str, frozenset], float] = {}
    pattern = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = pattern.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def metric_sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (over replicas, nodes, other tags)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)
