"""Head failure under load: requests failed and time to recover when the head's GCS dies (issue 24).

    python -m bench.head_failover --bundle BUNDLE [--outage-s 15] [--out RESULT.json] [--plan]

Starts redis-server on loopback (password, fsync-always append-only file), a Ray head with GCS fault tolerance
on it and token auth, serves BUNDLE there (Serve's proxy and the ingress replica's direct port), drives Recommend
through both at a steady pace, SIGKILLs the head's gcs_server, leaves it down `--outage-s`, restarts it from its
own command line, and reports per path and phase (before / outage / after) the requests, failures and status
codes, and how long after the restart a new driver saw the application RUNNING (cluster/head_failover.py).
Everything it starts is stopped at the end; other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_common, default_out, print_plan, require


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.head_failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="model bundle directory (prefmine train --out)")
    p.add_argument("--outage-s", type=float, default=15.0, help="seconds the GCS stays down")
    add_common(p, "head_failover")
    a = p.parse_args(argv)
    bundle = Path(a.bundle).resolve()
    require([bundle / "manifest.json"], "--bundle must be a bundle directory (prefmine train --out)")
    if shutil.which("redis-server") is None:
        raise SystemExit("error: redis-server is not installed (bash cluster/install_services.sh)")
    out = Path(a.out) if a.out else default_out("head_failover", False)
    if a.plan:
        return print_plan("head_failover", bundle=bundle, outage_s=a.outage_s, out=out)

    from bench.data_scale import machine
    from bench.serve_latency import free_direct_port
    from cluster.head_failover import (
        Drill,
        FailoverConfig,
        answers,
        free_port,
        serve_on,
        start_head,
        start_redis,
        stop_group,
        stop_head,
    )
    from serve.run import SERVE_ENV, direct_ingress_env

    load_at_start = os.getloadavg()  # the machine may be shared: its load is part of the figures' context
    work = Path(tempfile.mkdtemp(prefix="pm-ha-"))
    redis = head = server = None
    try:
        redis = start_redis(work / "redis", free_port(), os.urandom(16).hex())
        redis_port = int(redis.args[redis.args.index("--port") + 1])
        password = redis.args[redis.args.index("--requirepass") + 1]
        port = free_port()
        direct_port = free_direct_port(port)
        head = start_head(work, redis_port, password, extra_env={**SERVE_ENV, **direct_ingress_env(direct_port)})
        server = serve_on(head, bundle, port, direct_port, work / "feedback.sqlite", log=work / "serve.log")
        targets = {"proxy": (f"127.0.0.1:{port}", (("application", "prefmine"),)),
                   "direct": (f"127.0.0.1:{direct_port}", ())}
        t0 = time.time()
        while not all(answers(t, md) for t, md in targets.values()):
            if server.poll() is not None or time.time() - t0 > 900:
                tail = (work / "serve.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"error: the served application did not come up:\n{tail}")
            time.sleep(2)
        result = Drill(head, targets, FailoverConfig(outage_s=a.outage_s)).run()
    finally:
        stop_group(server)
        left = stop_head(head)
        stop_group(redis)
        shutil.rmtree(work, ignore_errors=True)
    version = json.loads((bundle / "manifest.json").read_text()).get("version")
    report = {"bench": "head_failover", "machine": machine(), "bundle": str(bundle), "bundle_version": version,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average_1m": {"start": round(load_at_start[0], 2), "end": round(os.getloadavg()[0], 2)}, **result,
              "head_processes_left_after_stop": sorted(left),
              "failed_requests": sum(p["failed"] for t in result["targets"].values() for p in t.values())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
