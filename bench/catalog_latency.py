"""Live-catalogue latency: how long after a WriteCatalog retirement is acknowledged the item stops being
recommended, and how long after a new item's upsert it is recommended, on `prefmine serve` (serve.run.run_serve)
in a subprocess with its own Ray.

Retirements: each of `--writes` rounds retires the item a cold-start user's Recommend shows first (popularity, so
the answer is deterministic), then polls Recommend every 20 ms until the item is gone; the latency runs from just
before the write RPC to the first answer without the item, so it includes the write's durable commit and the
replica's poll of the change log (prefmine.serving.live_catalog, about every second).

New items: each of `--writes` rounds upserts an item the bundle does not hold (a title and a brand of its own),
then polls every 20 ms a Recommend whose rules keep that brand only, for a user with one recent event (so the
ranker, not popularity, answers), until the item comes back; the latency adds the replica's embedding of the new
item (encoder deployment, then the ranker's cold-item vectors: serve/new_items.py) to the poll.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_common, default_out, print_plan, require
from bench.serve_latency import _start, _stop, machine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.catalog_latency", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--writes", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="5 writes")
    add_common(p, "catalog_latency")
    a = p.parse_args(argv)
    bundle = str(Path(a.bundle).resolve())
    writes = 5 if a.quick else a.writes
    out_path = Path(a.out) if a.out else default_out("catalog_latency", a.quick)
    require([Path(bundle) / "manifest.json"], "--bundle must be a bundle directory (prefmine train --out)")
    if a.plan:
        return print_plan("catalog_latency", bundle=bundle, writes=writes, out=out_path)
    import grpc

    from prefmine.v1 import recommender_pb2 as pb
    from prefmine.v1 import recommender_pb2_grpc as pb_grpc
    from serve.run import free_port

    db = str(Path(tempfile.mkdtemp(prefix="prefmine-bench-")) / "feedback.sqlite")
    port = free_port()
    code = (f"import sys; from serve.run import run_serve; "
            f"sys.exit(run_serve({bundle!r}, {port}, feedback_db={db!r}, address='local', insecure=True))")
    proc = _start([sys.executable, "-c", code], "prefmine serve: ready")
    latencies, new_latencies = [], []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)

            def first() -> str:
                return stub.Recommend(pb.RecommendRequest(user_id="bench-cold-user", k=10), timeout=30).items[0].item_id

            seen = stub.Recommend(pb.RecommendRequest(user_id="bench-cold-user", k=1), timeout=30).items[0].item_id
            recent = [pb.Event(item_id=seen, type=pb.EVENT_TYPE_VIEW, timestamp=int(time.time()) - 60)]

            def recommended(brand: str) -> list[str]:
                return [it.item_id for it in stub.Recommend(pb.RecommendRequest(
                    user_id="bench-warm-user", k=10, recent_events=recent, rules=pb.Rules(brands=[brand])),
                    timeout=30).items]

            for n in range(writes):  # new items first: the retirements below change the popular items
                item, brand = f"bench-new-item-{n}", f"Bench Brand {n}"
                row = pb.CatalogRow(item_id=item, title=f"Bench new product number {n}", brand=brand,
                                    categories=["Bench"], available=True)
                t0 = time.monotonic()
                stub.WriteCatalog(pb.WriteCatalogRequest(rows=[row], idempotency_key=f"bench-new-{n}"), timeout=30)
                while item not in recommended(brand):
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError(f"{item} not recommended 60 s after its write")
                    time.sleep(0.02)
                new_latencies.append(time.monotonic() - t0)
                print(f"new item {n}: recommended after {new_latencies[-1]:.3f} s", flush=True)
            for n in range(writes):
                item = first()
                t0 = time.monotonic()
                stub.WriteCatalog(pb.WriteCatalogRequest(rows=[pb.CatalogRow(item_id=item, retire=True)],
                                                         idempotency_key=f"bench-{n}"), timeout=30)
                while first() == item:
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError(f"{item} still recommended 60 s after its retirement")
                    time.sleep(0.02)
                latencies.append(time.monotonic() - t0)
                print(f"write {n}: {item} gone after {latencies[-1]:.3f} s", flush=True)
    finally:
        _stop(proc)
    out = {"bench": "catalog_latency", "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "settings": {"bundle": bundle, "writes": writes, "poll_interval_s": 1.0,
                        "rpc": "WriteCatalog retire; WriteCatalog upsert of a new item",
                        "probe": "retire: cold-start Recommend; new item: Recommend with a brand rule for a user with "
                                 "one recent event; both polled every 20 ms"},
           "write_to_gone_s": {"median": round(statistics.median(latencies), 3), "max": round(max(latencies), 3),
                               "min": round(min(latencies), 3), "all": [round(x, 3) for x in latencies]},
           "write_to_recommendable_s": {"median": round(statistics.median(new_latencies), 3),
                                        "max": round(max(new_latencies), 3), "min": round(min(new_latencies), 3),
                                        "all": [round(x, 3) for x in new_latencies]}}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(out, indent=2) + "\n")
    gone = out["write_to_gone_s"]
    new = out["write_to_recommendable_s"]
    print(f"write-to-gone median {gone['median']} s, max {gone['max']} s; write-to-recommendable median "
          f"{new['median']} s, max {new['max']} s over {writes} writes each; wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
