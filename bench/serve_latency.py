"""Serving latency: p50/p95/p99 and QPS of Recommend at concurrency 1, 8 and 32, for three systems.

    python -m bench.serve_latency --bundle BUNDLE [--out RESULT.json] [--quick] [--seconds S] [--plan]

* ``inprocess``: the ingress code itself (serve.app.RecommenderIngress and the ranker/encoder
  deployment classes, undecorated), called in this process with direct-call handles: the model cost alone.
* ``bare_grpc``: the same objects behind a plain ``grpc.aio`` server in a subprocess: model + gRPC.
* ``ray_serve``: ``prefmine serve`` (serve.run.run_serve) in a subprocess: model + gRPC + Serve's proxy, router
  and the actor hops (Recommend: proxy -> ingress -> ranker, which also selects the slate).
* ``ray_serve_direct``: the same with ``--direct-port`` (Serve's direct ingress), the load sent to the ingress
  replica's own gRPC server: no proxy actor, one actor hop (ingress -> ranker).

All three run the same code path (RecommenderIngress._recommend -> RankerDeployment.slate; in-process and bare
call its unbatched twin, since @serve.batch needs a Serve replica) over the same users in the same order.

The load generator is ``grpc.aio`` in this process (for inprocess: asyncio tasks calling the method): C workers
each send a request, wait for the answer and send the next, for S seconds (after a warm-up), over users drawn
from the bundle's known users (seeded). Every run is one process on this machine, with one torch thread per
process. The JSON records the machine, the settings and ``results[] = {system, concurrency, p50_ms, p95_ms,
p99_ms, qps, errors}``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_common, default_out, print_plan, require

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("inprocess", "bare_grpc", "ray_serve", "ray_serve_direct")
CONCURRENCY = (1, 8, 32)


UNBATCHED = {"candidates": "candidates_unbatched", "slate": "slate_unbatched"}  # @serve.batch needs a Serve replica


class StatusContext:
    """The part of a grpc context the ingress uses; a non-OK status it sets becomes an exception (an error)."""

    def invocation_metadata(self):
        return ()

    def set_code(self, code):
        import grpc

        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"status {code.name}")

    def set_details(self, details):
        pass


class DirectHandle:
    """Calls a deployment object's methods in this process, shaped like a DeploymentHandle
    (``await handle.method.remote(...)``)."""

    def __init__(self, obj, name: str):
        self._obj, self.deployment_name = obj, name

    def __getattr__(self, name):
        fn = getattr(self._obj, UNBATCHED.get(name, name))

        class _Method:
            deployment_name = self.deployment_name

            @staticmethod
            async def remote(*args, **kwargs):
                out = fn(*args, **kwargs)
                return await out if inspect.isawaitable(out) else out

        return _Method


async def local_ingress(bundle: str, feedback_db: str):
    """The serving graph of serve.app without Ray: the same classes, direct-call handles, the same user_config.

    A coroutine: the ranker's @serve.batch queue belongs to the event loop that first uses it, so build and
    load the graph in the loop that will call it."""
    from serve import app
    from serve.served import BundleRef

    config = BundleRef.of({"bundle": bundle}).config()
    parts = {}
    for name in ("RankerDeployment", "EncoderDeployment"):
        obj = getattr(app, name).func_or_class()
        await obj.reconfigure(config)
        parts[name] = DirectHandle(obj, name)
    ingress = app.RecommenderIngress.func_or_class(
        parts["RankerDeployment"], parts["EncoderDeployment"],
        feedback_db=feedback_db, auth={"required": False})
    await ingress.reconfigure(config)
    return ingress


def known_users(bundle_path: str, n: int = 200, seed: int = 0) -> list[str]:
    """Raw ids of users with a history in the bundle, from the raw files of the data set it was trained on
    (its manifest's source and category under $PREFMINE_DATA_DIR, else ../shared/data)."""
    from prefmine.bundle import Bundle
    from prefmine.data.sources import read_rows

    b = Bundle.load(bundle_path)
    ds = b.manifest.get("dataset", {})
    source = ds.get("source", "amazon2018")
    data = Path(os.environ.get("PREFMINE_DATA_DIR", ROOT.parent / "shared" / "data"))
    out: list[str] = []
    for raw in dict.fromkeys(read_rows(source, data / source, ds.get("category"))["user"].astype(str)):
        if len(b.history(b.pseudonymise(raw))):
            out.append(raw)
            if len(out) >= 4 * n:
                break
    random.Random(seed).shuffle(out)
    return out[:n] or ["cold-start-user"]


def _stats(lat: list[float], errors: int, seconds: float) -> dict:
    a = np.asarray(lat) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 2) if len(a) else None,
            "p95_ms": round(float(np.percentile(a, 95)), 2) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 2) if len(a) else None,
            "qps": round(len(a) / seconds, 1), "requests": len(a), "errors": errors}


async def _load(call, users: list[str], k: int, concurrency: int, seconds: float, warmup: float) -> dict:
    from prefmine.v1 import recommender_pb2 as pb

    lat: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def worker(w: int):
        nonlocal errors
        i = w
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            req = pb.RecommendRequest(user_id=users[i % len(users)], k=k)
            i += concurrency
            t0 = time.perf_counter()
            try:
                await call(req)
                ok = True
            except Exception:  # noqa: BLE001 - counted, the load goes on
                ok = False
            t1 = time.perf_counter()
            if t0 >= t_measure:
                if ok:
                    lat.append(t1 - t0)
                else:
                    errors += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return _stats(lat, errors, seconds)


def run_grpc_load(addr: str, users, k, concurrency, seconds, warmup) -> dict:
    import grpc

    from prefmine.v1 import recommender_pb2_grpc as pb_grpc

    async def main():
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.RecommenderStub(ch)
            return await _load(lambda r: stub.Recommend(r, timeout=30), users, k, concurrency, seconds, warmup)

    return asyncio.run(main())


# -- bare grpc.aio server (subprocess) -----------------------------------------------------------------------
async def _bare_server(bundle: str, port: int, feedback_db: str) -> None:
    import grpc

    from prefmine.v1 import recommender_pb2_grpc as pb_grpc

    ingress = await local_ingress(bundle, feedback_db)

    class Servicer(pb_grpc.RecommenderServicer):
        async def Recommend(self, request, context):
            return await ingress.Recommend(request, context)

        async def ModelInfo(self, request, context):
            return await ingress.ModelInfo(request, context)

    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("bare grpc ready", flush=True)
    await server.wait_for_termination()


def _start(cmd: list[str], marker: str, timeout: float = 300) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t0 = time.monotonic()
    for line in proc.stdout:
        if marker in line:
            # keep draining its output so the pipe never fills
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if time.monotonic() - t0 > timeout:
            break
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd[:3])}: did not print {marker!r}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_direct_port(avoid: int) -> int:
    """The start of a run of free ports for direct ingress replicas (serve.run.DIRECT_INGRESS_REPLICA_PORTS),
    scanning up from $PREFMINE_DIRECT_PORT_FIRST (default 42000) to 60000. Processes that start servers at the
    same time should scan from different places: a run found free is only bound once the
    server is up, so two scans from the same start could both pick it."""
    import socket

    from serve.run import DIRECT_INGRESS_REPLICA_PORTS

    first = int(os.environ.get("PREFMINE_DIRECT_PORT_FIRST", "42000"))
    for start in range(first, 60000, DIRECT_INGRESS_REPLICA_PORTS):
        if start <= avoid < start + DIRECT_INGRESS_REPLICA_PORTS:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", start))
            return start
        except OSError:
            continue
    raise RuntimeError("no free port for direct ingress")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or None,
            "gpu": None, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_latency", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="model bundle directory")
    add_common(p, "serve_latency")
    p.add_argument("--quick", action="store_true", help="3 s per point (under 5 minutes here)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per point (default 20; quick 3)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--_bare_server", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bundle = str(Path(a.bundle).resolve())
    if a._bare_server:
        asyncio.run(_bare_server(bundle, int(a._bare_server[0]), a._bare_server[1]))
        return 0
    seconds = a.seconds or (3.0 if a.quick else 20.0)
    out_path = Path(a.out) if a.out else default_out("serve_latency", a.quick)
    require([Path(bundle) / "manifest.json"], "--bundle must be a bundle directory (prefmine train --out)")
    unknown = set(a.systems.split(",")) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"error: --systems: unknown system {sorted(unknown)[0]!r} (choose from {', '.join(SYSTEMS)})")
    if a.plan:
        return print_plan("serve_latency", bundle=bundle, systems=a.systems.split(","), k=a.k,
                          seconds_per_point=seconds, concurrency=list(CONCURRENCY), out=out_path)
    warmup = 1.0 if a.quick else 3.0
    users = known_users(bundle)
    results = []
    tmp = tempfile.mkdtemp(prefix="prefmine-bench-")
    db = str(Path(tmp) / "feedback.sqlite")
    from serve.run import free_port

    for system in a.systems.split(","):
        t0 = time.monotonic()
        if system == "inprocess":
            async def inprocess() -> list:
                ingress = await local_ingress(bundle, db)

                async def call(req):
                    return await ingress.Recommend(req, StatusContext())

                return [(c, await _load(call, users, a.k, c, seconds, warmup)) for c in CONCURRENCY]

            points = asyncio.run(inprocess())
        elif system in ("bare_grpc", "ray_serve", "ray_serve_direct"):
            port = free_port()
            target = port
            if system == "bare_grpc":
                cmd = [sys.executable, "-m", "bench.serve_latency", "--bundle", bundle, "--out", "-",
                       "--_bare_server", str(port), db]
                proc = _start(cmd, "bare grpc ready")
            else:
                direct = None
                if system == "ray_serve_direct":
                    direct = target = free_direct_port(port)
                code = (f"import sys; from serve.run import run_serve; "
                        f"sys.exit(run_serve({bundle!r}, {port}, feedback_db={db!r}, address='local', "
                        f"direct_port={direct!r}, insecure=True))")
                proc = _start([sys.executable, "-c", code], "prefmine serve: ready")
            try:
                points = [(c, run_grpc_load(f"127.0.0.1:{target}", users, a.k, c, seconds, warmup))
                          for c in CONCURRENCY]
            finally:
                _stop(proc)
        else:
            raise SystemExit(f"--systems: unknown system {system!r}")
        for c, st in points:
            results.append({"system": system, "concurrency": c, **st})
            print(f"{system:<10} c={c:<3} p50 {st['p50_ms']} ms  p95 {st['p95_ms']} ms  p99 {st['p99_ms']} ms  "
                  f"{st['qps']} q/s  errors {st['errors']}", flush=True)
        print(f"{system}: {time.monotonic() - t0:.0f} s", flush=True)
    out = {"bench": "serve_latency", "machine": machine(),
           "settings": {"bundle": bundle, "k": a.k, "seconds_per_point": seconds, "warmup_s": warmup,
                        "users": len(users), "concurrency": list(CONCURRENCY), "rpc": "Recommend",
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "results": results}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
