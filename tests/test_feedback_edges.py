"""The feedback log at its edges, on real components.

Disk full: a small real tmpfs (mounted by the test; we run as root here and in CI) is filled, and then an append
raises StoreUnavailable with its transaction rolled back: the store holds exactly the acknowledged rows, and once
space is freed it takes writes again. For SQLite the whole database lives on the tmpfs; for PostgreSQL the store's
tables live in a tablespace on it (the WAL stays on the server's own disk), so the server reports DiskFull. At the serving level, the ingress's own class outside Ray behind a real gRPC server
answers RecordFeedback on a full disk with UNAVAILABLE and stores nothing.

Durability: a kill -9 of the writer proves nothing about fsync (the page cache survives a dead process). Instead
the writer runs under strace, and for every acknowledged append the trace must show, after the last write to a
database file and before the acknowledgement, an fsync/fdatasync of that file. For SQLite the acknowledgement is
the writer's own output line after `append` returned; for PostgreSQL it is the server backend sending the COMMIT
reply. Each check also runs against a store configured without the fsync (SQLite synchronous=OFF, PostgreSQL
synchronous_commit=off) and must then find the violation, so the check itself can fail.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from prefmine.feedback import FeedbackEvent, StoreUnavailable, open_feedback_store

ROOT = Path(__file__).resolve().parents[1]
TMPFS_SIZE = "512k"


def _unmet(msg: str):
    """Skip outside CI; fail under CI, where the test must run (root, tmpfs, strace are provided there)."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@contextmanager
def mounted_tmpfs(mnt: Path) -> Iterator[Path]:
    """A freshly mounted 512 KiB tmpfs at `mnt` (created), unmounted afterwards."""
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0777", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        _unmet(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small") as mnt:
        yield mnt


def fill(path: Path) -> int:
    """Write `path` until the filesystem says ENOSPC; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                    n += size
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    return n


def events(tag: str, n: int = 4) -> list[FeedbackEvent]:
    """n events of ~1 KiB each, so a few appends need fresh pages."""
    return [FeedbackEvent(user="u1", item=f"{tag}/{j}/" + "x" * 1000, event="click", ts=1_700_000_000 + j)
            for j in range(n)]


def append_until_full(store, acked: dict[str, int], limit: int = 400) -> str:
    """Keyed appends until the store refuses one with StoreUnavailable; the acknowledged ones go into `acked`.
    Returns the refused key."""
    for b in range(limit):
        key = f"k{len(acked)}-{b}"
        try:
            acked[key] = store.append(events(key), idempotency_key=key)
        except StoreUnavailable:
            return key
    raise AssertionError(f"{limit} appends on a full filesystem were all acknowledged")


def stored_keys(store) -> dict[str, int]:
    """Per append key, the id of its last stored event (from the rows, not the idempotency table)."""
    out: dict[str, int] = {}
    for rid, _user, item, *_ in store.read_since(0):
        out[item.split("/")[0]] = max(out.get(item.split("/")[0], 0), int(rid))
    return out


def check_full_disk(location: str, ballast: Path) -> None:
    """The shared scenario: some appends, the disk filled, appends until one is refused, nothing unacknowledged
    stored (seen through a fresh connection too), then space freed and writes taken again."""
    store = open_feedback_store(location)
    try:
        acked = {f"pre{i}": store.append(events(f"pre{i}"), idempotency_key=f"pre{i}") for i in range(3)}
        assert fill(ballast) > 0
        refused = append_until_full(store, acked)
        with pytest.raises(StoreUnavailable):  # still full: refused again, and the store is not wedged
            store.append(events(refused), idempotency_key=refused)
        assert stored_keys(store) == acked
        fresh = open_feedback_store(location, create=False)
        try:
            assert stored_keys(fresh) == acked
            assert fresh.count() == 4 * len(acked)
        finally:
            fresh.close()
        ballast.unlink()  # space again: the refused request's retry is stored, once
        last = store.append(events(refused), idempotency_key=refused)
        assert store.append(events(refused), idempotency_key=refused) == last
        assert stored_keys(store) == {**acked, refused: last}
    finally:
        store.close()


def test_sqlite_full_disk_raises_store_unavailable_and_keeps_exactly_the_acknowledged_rows(small_fs):
    check_full_disk(str(small_fs / "fb.sqlite"), small_fs / "ballast")


def test_sqlite_full_disk_refuses_impressions_too(small_fs):
    from prefmine.feedback import Impression

    store = open_feedback_store(str(small_fs / "fb.sqlite"))
    try:
        fill(small_fs / "ballast")
        with pytest.raises(StoreUnavailable, match="retry later"):
            for n in range(400):
                store.append_impression(Impression(impression_id=f"imp-{n}", user="u1", ts=1, items=["a" * 900] * 4,
                                                   positions=[0, 1, 2, 3], propensities=[1.0] * 4, policy="greedy",
                                                   bundle_version="v1"))
        stored = {i.impression_id for i in store.read_impressions_since(0)}
        assert stored == {f"imp-{k}" for k in range(n)}  # every acknowledged one, not the refused one
    finally:
        store.close()


@pytest.fixture
def small_pg_fs(postgres_server) -> Iterator[Path]:
    """The small tmpfs inside the server's own directory (the server's OS user can reach it there)."""
    with mounted_tmpfs(postgres_server.base / f"small-{time.monotonic_ns()}") as mnt:
        yield mnt


def test_postgres_full_tablespace_raises_store_unavailable(small_pg_fs, postgres_server):
    """The store's tables in a tablespace on the small tmpfs: the server answers DiskFull (53100) when it cannot
    extend them, the store raises StoreUnavailable, and nothing unacknowledged is stored."""
    import psycopg

    small_fs = small_pg_fs
    space = small_fs / "pg"
    space.mkdir()
    if os.geteuid() == 0:
        shutil.chown(space, "postgres", "postgres")
    dsn = postgres_server.new_database()
    name = f"small_{os.getpid()}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{space}'")
    try:
        dbname = dsn.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {dbname} SET default_tablespace = {name}")
        check_full_disk(dsn, small_fs / "ballast")
    finally:
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
            conn.execute(f"DROP TABLESPACE {name}")


@pytest.mark.slow
def test_ingress_answers_record_feedback_unavailable_on_a_full_disk(bundle_path, small_fs):
    """The ingress's own class outside Ray (the code a replica runs) behind a real in-process gRPC server, its
    SQLite feedback log on the small tmpfs: once the disk is full RecordFeedback answers UNAVAILABLE ("retry
    later", not INTERNAL) and stores nothing; after space is freed the same request (same idempotency key) is
    stored once. The log then holds exactly the acknowledged requests' events."""
    import asyncio

    import grpc

    from prefmine.v1 import recommender_pb2 as pb
    from prefmine.v1 import recommender_pb2_grpc
    from serve import app
    from serve.served import BundleRef
    from serve.wire import add_services

    db = small_fs / "fb.sqlite"
    config = BundleRef.of({"bundle": str(bundle_path)}).config()

    def request(key: str) -> pb.RecordFeedbackRequest:
        return pb.RecordFeedbackRequest(idempotency_key=key, events=[
            pb.Event(user_id="edge-user", item_id=f"{key}/{j}/" + "x" * 200, type=pb.EVENT_TYPE_CLICK,
                     timestamp=int(time.time())) for j in range(8)])

    async def run():
        ingress = app.RecommenderIngress.func_or_class(None, None, feedback_db=str(db))
        await ingress.reconfigure(config)
        server = grpc.aio.server()
        add_services(ingress, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                acked = {}
                for key in ("a", "b"):
                    acked[key] = (await stub.RecordFeedback(request(key), timeout=30)).last_id
                fill(small_fs / "ballast")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    for n in range(400):
                        key = f"full-{n}"
                        acked[key] = (await stub.RecordFeedback(request(key), timeout=30)).last_id
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                assert "retry later" in refused.value.details()
                with ingress._feedback_lock:
                    stored = stored_keys(ingress.feedback)
                assert stored == acked  # nothing of the refused request
                (small_fs / "ballast").unlink()
                again = await stub.RecordFeedback(request(key), timeout=30)
                assert again.stored == 8
                assert (await stub.RecordFeedback(request(key), timeout=30)).last_id == again.last_id
            fresh = open_feedback_store(str(db), create=False)
            try:
                assert stored_keys(fresh) == {**acked, key: again.last_id}
                assert fresh.count() == 8 * (len(acked) + 1)
            finally:
                fresh.close()
        finally:
            await server.stop(None)
            ingress.feedback.close()

    asyncio.run(run())


# -- durability: the fsync, seen in the system calls ------------------------------------------------------------

TRACED = "write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,sendto"
# "1234  pwrite64(3</tmp/x/fb.sqlite-wal>, ..." (strace -f -y): pid, call, first fd with its path
CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((\d+)<([^>]*)>(.*)$")


def need_strace() -> str:
    exe = shutil.which("strace")
    if not exe:
        _unmet("strace is not installed (cluster/install_services.sh installs it)")
    return exe


def unsynced_acks(trace: list[tuple[str, str, str]], is_data, is_ack) -> tuple[int, list[str]]:
    """(acknowledgements seen, the bad ones). An acknowledgement is bad unless, since the previous one, a data
    file was synced (fsync/fdatasync) and every data file written was synced after its last write: an append
    always writes, so an acknowledgement with no sync before it (PostgreSQL's synchronous_commit=off leaves the
    commit record in memory for the WAL writer) is as bad as one after an unsynced write. `trace` is (call,
    path, rest of line) in order."""
    dirty: set[str] = set()
    synced = False
    acks, bad = 0, []
    for call, path, rest in trace:
        if is_ack(call, path, rest):
            acks += 1
            if dirty or not synced:
                bad.append(f"ack {acks} ({rest[:40]!r}): " + (f"{sorted(dirty)} written but not synced" if dirty
                                                              else "no data file synced since the previous one"))
            dirty, synced = set(), False
        elif (call in ("fsync", "fdatasync") or (call == "sync_file_range" and "WAIT_AFTER" in rest)) and is_data(path):
            dirty.discard(path)
            synced = True
        elif call.startswith(("write", "pwrite")) and is_data(path):
            dirty.add(path)
    return acks, bad


def parse_trace(text: str) -> list[tuple[str, str, str]]:
    out = []
    for line in text.splitlines():
        m = CALL.match(line)
        if m:
            out.append((m.group(1), m.group(3), m.group(4)))
    return out


SQLITE_WRITER = r"""
import sys
from prefmine.feedback import FeedbackEvent, open_feedback_store
store = open_feedback_store(sys.argv[1])
if sys.argv[2] != "as-shipped":
    store._db.execute(f"PRAGMA synchronous={sys.argv[2]}")  # the store misconfigured: what the check must catch
for b in range(int(sys.argv[3])):
    last = store.append([FeedbackEvent(user="u1", item=f"i{b}-{j}", event="click", ts=1) for j in range(3)],
                        idempotency_key=f"k{b}")
    sys.stdout.write(f"ACK {last}\n")
    sys.stdout.flush()
store.close()
"""


def trace_sqlite_writer(db: Path, synchronous: str, appends: int = 12) -> tuple[int, list[str]]:
    out = db.parent / f"trace-{synchronous}.txt"
    res = subprocess.run([need_strace(), "-f", "-y", "-s", "32", "-e", f"trace={TRACED}", "-o", str(out),
                          sys.executable, "-c", SQLITE_WRITER, str(db), synchronous, str(appends)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("ACK ") == appends
    names = {db.name, db.name + "-wal", db.name + "-journal"}
    return unsynced_acks(parse_trace(out.read_text()), lambda p: Path(p).name in names,
                         lambda call, path, rest: call == "write" and rest.startswith(', "ACK '))


def test_sqlite_append_is_fsynced_before_it_is_acknowledged(tmp_path):
    acks, bad = trace_sqlite_writer(tmp_path / "fb.sqlite", "as-shipped")
    assert acks == 12 and bad == []


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL"])
def test_the_fsync_check_catches_a_store_without_it(tmp_path, synchronous):
    """The same check on a store that does not sync each commit (OFF: never; NORMAL in WAL mode: only at
    checkpoints) finds acknowledgements of unsynced writes: the durability test above cannot pass without them."""
    acks, bad = trace_sqlite_writer(tmp_path / "fb.sqlite", synchronous)
    assert acks == 12 and len(bad) >= 10, bad


def trace_postgres_appends(dsn: str, synchronous_commit: str | None, appends: int = 8) -> tuple[int, list[str]]:
    """Appends through a one-connection store while strace follows that connection's server backend; the
    acknowledgement is the backend sending CommandComplete "COMMIT"."""
    from prefmine.feedback import FeedbackStoreConfig

    strace = need_strace()
    store = open_feedback_store(dsn, config=FeedbackStoreConfig(pool_min_size=1, pool_max_size=1))
    try:
        with store._pool.connection() as conn:  # the pool's only connection: every append uses this backend
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            if synchronous_commit is not None:  # misconfigured on purpose (the pool's configure sets "on")
                conn.execute(f"SET synchronous_commit = {synchronous_commit}")
            conn.commit()
        out = Path(dsn.rsplit("/", 1)[1] + f"-{synchronous_commit}.trace").absolute()
        proc = subprocess.Popen([strace, "-y", "-s", "64", "-e", f"trace={TRACED}", "-o", str(out), "-p", str(pid)],
                                stderr=subprocess.PIPE, text=True)
        try:
            t0 = time.monotonic()
            while "attached" not in (line := proc.stderr.readline()):
                assert line and time.monotonic() - t0 < 30, f"strace did not attach: {line!r}"
            for b in range(appends):
                store.append([FeedbackEvent(user="u1", item=f"i{b}", event="click", ts=1)], idempotency_key=f"k{b}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        text = out.read_text()
        out.unlink()
    finally:
        store.close()
    return unsynced_acks(parse_trace(text), lambda p: "/pg_wal/" in p,
                         lambda call, path, rest: call == "sendto" and "COMMIT" in rest)


def test_postgres_commit_is_fsynced_before_it_is_acknowledged(postgres_server):
    acks, bad = trace_postgres_appends(postgres_server.new_database(), None)
    assert acks == 8 and bad == []


def test_the_postgres_fsync_check_catches_synchronous_commit_off(postgres_server):
    acks, bad = trace_postgres_appends(postgres_server.new_database(), "off")
    assert acks == 8 and len(bad) >= 6, bad
