"""Fuzzing the live gRPC server: generated requests on every RPC, through Serve's proxy and the direct ingress.

    python -m bench.fuzz --bundle BUNDLE [--per-rpc N] [--seed S] [--concurrency C] [--out RESULT.json] [--plan]

Starts ``prefmine serve`` (serve.run.run_serve) in a subprocess with a fresh API key, a fresh feedback database
and direct ingress on, then sends N requests per RPC (10,000 by default), drawn by prefmine.fuzzing from the
proto descriptors (ids the bundle knows among them, so some requests reach the ranker, the encoder and the
feedback log), half through the proxy and half straight to the ingress replica. Per RPC it counts the answers by
status code and checks the invariants of issue 23: no INTERNAL or UNKNOWN, every INVALID_ARGUMENT names a field
of the request, no replica restarted (the Serve controller's "Adding 1 replica" lines), and the server still
answers a valid request at the end. The JSON: ``rpcs.<name>.{requests, internal, rejected, restarts, ok, codes,
unnamed, seconds}`` (rejected: any non-OK answer that is not INTERNAL/UNKNOWN), the settings and the machine.
It is written after every RPC, so a run stopped part way keeps what it measured. Exit status 1 when an
invariant failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import add_common, default_out, print_plan, require

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-fuzz-key-0123456789abcdef"
FAILURES = {"INTERNAL", "UNKNOWN"}


@dataclass
class Tally:
    """What one RPC's generated requests got back."""

    requests: int = 0
    codes: Counter = field(default_factory=Counter)
    unnamed: list = field(default_factory=list)  # INVALID_ARGUMENT details that name no field (first few)
    internal: list = field(default_factory=list)  # INTERNAL/UNKNOWN details (first few)

    def add(self, rpc: str, data: bytes, code: str, details: str) -> None:
        from prefmine.fuzzing import rejection_names_field

        self.requests += 1
        self.codes[code] += 1
        if code in FAILURES and len(self.internal) < 5:
            self.internal.append(f"{code}: {details[:200]} (request {data[:60]!r}, {len(data)} bytes)")
        if code == "INVALID_ARGUMENT" and not rejection_names_field(rpc, data, details):
            self.codes["unnamed"] += 1
            if len(self.unnamed) < 5:
                self.unnamed.append(f"{details[:200]} (request {data[:60]!r})")

    def summary(self) -> dict:
        codes = {k: v for k, v in self.codes.items() if k != "unnamed"}
        failures = sum(codes.get(c, 0) for c in FAILURES)
        return {"requests": self.requests, "internal": failures, "ok": codes.get("OK", 0),
                "rejected": self.requests - codes.get("OK", 0) - failures, "unnamed": self.codes["unnamed"],
                "codes": dict(sorted(codes.items())), "internal_examples": self.internal,
                "unnamed_examples": self.unnamed}


def send_generated(channels: list, rpc: str, n: int, cfg, tally: Tally, seed: int = 0, concurrency: int = 4,
                   timeout_s: float = 60) -> None:
    """Draw ``n`` requests for ``rpc`` and send them, alternating over ``channels`` (each already carrying the
    API key), at most ``concurrency`` in flight; every answer goes into ``tally``."""
    import grpc

    from prefmine.fuzzing import for_each_example, requests_for

    calls = [ch.unary_unary(f"/prefmine.v1.Recommender/{rpc}", request_serializer=None,
                            response_deserializer=None) for ch in channels]
    inflight: deque = deque()
    lock = threading.Lock()

    def settle(fut, data):
        try:
            fut.result()
            code, details = "OK", ""
        except grpc.RpcError as e:
            code, details = e.code().name, e.details() or ""
        with lock:
            tally.add(rpc, data, code, details)

    def send(req):
        i = len(inflight) + tally.requests
        inflight.append((calls[i % len(calls)].future(req.data, timeout=timeout_s), req.data))
        while len(inflight) >= concurrency:
            settle(*inflight.popleft())

    for_each_example(requests_for(rpc, cfg), n, send, seed)
    while inflight:
        settle(*inflight.popleft())


class Server:
    """``run_serve`` in a subprocess (its own session and Ray), auth on, direct ingress on; its output kept."""

    def __init__(self, bundle: Path, workdir: Path):
        from bench.serve_latency import free_direct_port
        from serve.auth import hash_key
        from serve.run import free_port

        keys = workdir / "api_keys"  # the server's key-file format: name scopes sha256:<hex>
        keys.write_text(f"bench *,WriteCatalog,WriteCampaigns {hash_key(API_KEY)}\n")  # the writes must be named
        self.port = free_port()
        self.direct_port = free_direct_port(self.port)
        code = (f"import sys; from serve.run import run_serve; sys.exit(run_serve({str(bundle)!r}, {self.port}, "
                f"api_keys_file={str(keys)!r}, feedback_db={str(workdir / 'feedback.sqlite')!r}, "
                f"address='local', direct_port={self.direct_port}, rate_limit=0))")
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFMINE_API_KEYS_FILE")}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                if "prefmine serve: ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        t0 = time.monotonic()
        while not ready.wait(1.0):
            if self.proc.poll() is not None or time.monotonic() - t0 > 600:
                self.stop()
                raise RuntimeError("server did not get ready:\n" + "".join(self.lines[-40:]))
        self.addrs = {"proxy": f"127.0.0.1:{self.port}", "direct": f"127.0.0.1:{self.direct_port}"}

    def replicas_started(self) -> int:
        return sum(line.count("Adding 1 replica") for line in self.lines)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def keyed_channel(addr: str, key: str):
    import grpc

    class AddKey(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            md = list(details.metadata or []) + [("x-api-key", key)]
            return continuation(details._replace(metadata=md), request)

    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    return grpc.intercept_channel(grpc.insecure_channel(addr, options=opts), AddKey())


def known_ids(bundle: Path, n_users: int = 200) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Raw user ids with a history in the bundle (from its data set) and the catalogue's raw item ids."""
    from bench.serve_latency import known_users
    from prefmine.bundle import Bundle

    users = known_users(str(bundle), n_users)
    items = [str(i) for i in Bundle.load(bundle).item_ids]
    return tuple(users), tuple(items[:2000])


def machine() -> dict:
    from bench.data_scale import machine as m

    return {**m(), "load_average": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="model bundle directory to serve")
    add_common(p, "fuzz")
    p.add_argument("--quick", action="store_true", help="200 requests per RPC")
    p.add_argument("--per-rpc", type=int, default=None, help="requests per RPC (default 10000; --quick 200)")
    p.add_argument("--rpcs", default=None, help="comma-separated RPC names (default: every RPC of the service)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    a = p.parse_args(argv)
    from prefmine.fuzzing import RPCS

    per_rpc = a.per_rpc if a.per_rpc is not None else (200 if a.quick else 10_000)
    rpcs = a.rpcs.split(",") if a.rpcs else list(RPCS)
    unknown = [r for r in rpcs if r not in RPCS]
    if unknown:
        p.error(f"--rpcs: unknown RPC {unknown[0]!r} (known: {', '.join(RPCS)})")
    if per_rpc < 1:
        p.error("--per-rpc must be at least 1")
    bundle = Path(a.bundle)
    require([bundle / "manifest.json"], hint="--bundle must be a trained model bundle")
    out = Path(a.out) if a.out else default_out("fuzz", a.quick)
    if a.plan:
        return print_plan("fuzz", bundle=bundle, rpcs=rpcs, per_rpc=per_rpc, paths=["proxy", "direct"],
                          seed=a.seed, concurrency=a.concurrency, out=out)

    import grpc

    from prefmine.bundle import Bundle
    from prefmine.fuzzing import FuzzConfig
    from prefmine.v1 import recommender_pb2 as pb
    from prefmine.v1 import recommender_pb2_grpc as pb_grpc

    users, items = known_ids(bundle)
    cfg = FuzzConfig(known_users=users, known_items=items)
    result = {"bench": "fuzz", "bundle": str(bundle), "bundle_version": Bundle.load(bundle).version,
              "settings": {"per_rpc": per_rpc, "seed": a.seed, "concurrency": a.concurrency,
                           "paths": ["proxy", "direct"], "known_users": len(users), "known_items": len(items)},
              "machine": machine(), "rpcs": {}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        t0 = time.monotonic()
        server = Server(bundle, Path(tmp))
        result["startup_s"] = round(time.monotonic() - t0, 1)
        channels = [keyed_channel(server.addrs[p], API_KEY) for p in ("proxy", "direct")]
        try:
            for i, rpc in enumerate(rpcs):
                before, t1, tally = server.replicas_started(), time.monotonic(), Tally()
                send_generated(channels, rpc, per_rpc, cfg, tally, seed=a.seed + i, concurrency=a.concurrency)
                time.sleep(2)  # a replica that died is replaced within the controller's next loop
                row = {**tally.summary(), "restarts": server.replicas_started() - before,
                       "seconds": round(time.monotonic() - t1, 1)}
                result["rpcs"][rpc] = row
                ok &= row["internal"] == 0 and row["unnamed"] == 0 and row["restarts"] == 0
                shown = {k: row[k] for k in ("requests", "internal", "rejected", "unnamed", "restarts", "seconds")}
                print(f"{rpc}: {json.dumps(shown)}", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2) + "\n")
            stub = pb_grpc.RecommenderStub(channels[0])
            try:
                answered = len(stub.Recommend(pb.RecommendRequest(user_id=users[0], k=5), timeout=60).items)
            except grpc.RpcError as e:
                answered = 0
                print(f"the valid request after the fuzz failed: {e.code().name} {e.details()}", flush=True)
            result["valid_request_after"] = {"items": answered}
            ok &= answered > 0
        finally:
            result["server_exit_code"] = server.stop()
    result["invariants_hold"] = bool(ok)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; invariants {'hold' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
