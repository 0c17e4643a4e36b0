"""Shared fixtures: the real data directory, prepared datasets, one local Ray, and one tiny trained bundle.

Real data comes from $PREFMINE_DATA_DIR (CI: ../shared/data beside the checkout). The session Ray is started
once (2 CPUs, one thread per worker, auth disabled so a second driver such as `ray job submit` could join), and
the tiny bundle is trained once through the real pipeline (Ray Train + DeepSpeed + RLlib) and shared.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PREFMINE_PSEUDONYM_KEY", "prefmine-test-key")
# Ray Train starts a PreemptionWatcher actor per training run (observability for spot nodes being drained); the
# suite has no preemptible nodes and runs about twenty training runs, each paying for one more actor's start-up.
# Ray Train hands the driver's value to its controller; nodes the tests start inherit it.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def data_root() -> Path:
    return Path(os.environ.get("PREFMINE_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    root = data_root()
    if not (root / "amazon2018").is_dir():
        pytest.fail(f"real data not found at {root}: set PREFMINE_DATA_DIR (CI: ../shared/data)")
    return root


@pytest.fixture(scope="session")
def magazine5(raw_dir, tmp_path_factory) -> Path:
    """Magazine_Subscriptions 5-core reviews + metadata (no ratings CSV): small, real, with text."""
    import shutil

    from prefmine.data.prepare import prepare

    raw = tmp_path_factory.mktemp("raw_mag5") / "amazon2018"
    src = raw_dir / "amazon2018" / "Magazine_Subscriptions"
    dst = raw / "Magazine_Subscriptions"
    dst.mkdir(parents=True)
    for name in ("Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz"):
        os.symlink(src / name, dst / name)
    out = tmp_path_factory.mktemp("data") / "magazine5"
    prepare("amazon2018", raw, out, "Magazine_Subscriptions")
    shutil.rmtree(raw.parent, ignore_errors=True)
    return out


def bundle_versions(bundle: Path, root: Path, suffixes: dict[str, str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Copies of `bundle` under `root`, one per name, each its own version: the manifest's version plus the
    name's suffix ('' keeps it). ({name: directory}, {name: version}), for rollout tests."""
    import json
    import shutil

    dirs, versions = {}, {}
    for name, suffix in suffixes.items():
        d = dirs[name] = root / name
        shutil.copytree(bundle, d, symlinks=True)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["version"] = versions[name] = f"{manifest['version']}{suffix}"
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dirs, versions


def make_tiny_bert(path, texts, hidden=32):
    """A random 2-layer BERT with a WordPiece vocabulary of the texts' frequent words, saved like any HF model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir():
    """The function writing a tiny random BERT checkpoint directory (see make_tiny_bert)."""
    return make_tiny_bert


@pytest.fixture(scope="session")
def ray_session():
    from cluster.ray_env import ensure_ray

    ray = ensure_ray(num_cpus=2, dashboard=False)
    yield ray
    ray.shutdown()


# The session's training cluster (issue 24): a `ray start --head` node and a `ray start --address` worker node on
# this machine, each with its own temp and working directories, sharing nothing but an S3 server on loopback (moto,
# the dev extra; a real object store's protocol, in this process). The worker node alone has WORKER_RESOURCE, the
# head alone HEAD_RESOURCE; the tiny bundle's training workers and embedding actors ask for WORKER_RESOURCE.
WORKER_RESOURCE = "worker_node"
HEAD_RESOURCE = "head_node"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
for _k, _v in S3_CREDENTIALS.items():  # this process reads the bucket too; each node has them in its own env
    os.environ.setdefault(_k, _v)

# dist.checkpoint_every: one checkpoint per training run (the last epoch), not about ten: the 75-epoch tiny ranker
# runs spent more time saving DeepSpeed checkpoints than training; tests/test_resume.py and
# tests/test_deepspeed_configs.py test checkpoints themselves
TINY_TEST_CONFIG = f"""
encoder: {{mlm_epochs: 2, finetune_epochs: 1, vocab_size: 2000}}
ranker: {{min_steps: 150, epochs: 4}}
policy: {{max_iterations: 4, time_budget_s: 40, gate_sessions: 200}}
dist: {{checkpoint_every: 1000, worker_resources: {{{WORKER_RESOURCE}: 1}}}}
embed: {{actor_resources: {{{WORKER_RESOURCE}: 1}}}}
"""


@dataclass
class TrainingCluster:
    """The session's two-node cluster (`cluster.local_cluster.RayCluster`) and its bucket (an s3:// URI prefix
    with the endpoint options); `close()` stops both (the nodes, then the S3 server)."""

    cluster: object
    bucket: str
    close: object


def start_training_cluster(base: Path) -> TrainingCluster:
    """The S3 server and the two nodes: a head (2 CPUs, HEAD_RESOURCE) and a worker node (2 CPUs,
    WORKER_RESOURCE: 2, room for the two training workers); Ray metrics exported every second (the multi-node
    serving test reads per-replica counters)."""
    from contextlib import ExitStack

    from live_server import METRICS_REPORT_S, ray_cluster, s3_bucket

    stack = ExitStack()
    try:
        bucket = stack.enter_context(s3_bucket("prefmine-session", "prefmine"))
        env = {**S3_CREDENTIALS, "RAY_metrics_report_interval_ms": str(int(METRICS_REPORT_S * 1000))}
        cluster = stack.enter_context(ray_cluster(base, head_cpus=2, workers=((2, {WORKER_RESOURCE: 2}),),
                                                  env=env, head_resources={HEAD_RESOURCE: 1}))
    except BaseException:
        stack.close()
        raise
    return TrainingCluster(cluster, bucket, stack.close)


@dataclass(frozen=True)
class SubmittedPipeline:
    """What `prefmine jobs` said about the session's training job: the `submit --wait`, `status` and `logs`
    commands (CompletedProcess each), the job id, and the job's runtime_env as the head recorded it; where its
    data, run storage and bundle are in the bucket, and `bundle`, the bundle fetched from there (verified) for
    the tests on this machine."""

    bundle: Path
    submit: subprocess.CompletedProcess
    job_id: str
    status: subprocess.CompletedProcess | None
    logs: subprocess.CompletedProcess | None
    runtime_env: dict
    data_uri: str = ""
    storage_uri: str = ""
    bundle_uri: str = ""


def train_tiny_bundle(magazine5: Path, tmp_path_factory, training: TrainingCluster) -> SubmittedPipeline:
    """The session's tiny bundle, trained the way a user trains on a cluster: `python -m cluster.pipeline`
    submitted with `prefmine jobs submit --wait` to the session's two-node cluster, the project shipped as the
    job's working_dir. Its data, run storage and bundle are in the bucket (nothing a worker or actor reads is on
    the driver's disk); the bundle is then fetched into this session's temp dir for the other tests."""
    from live_server import prefmine_cli
    from ray.job_submission import JobSubmissionClient

    from prefmine import storage, store

    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(TINY_TEST_CONFIG)
    data, runs = storage.join(training.bucket, "datasets", "magazine5"), storage.join(training.bucket, "runs")
    out = storage.join(training.bucket, "bundles", "magazine5")
    storage.put_dir(magazine5, data)
    address = training.cluster.address
    submit = prefmine_cli("jobs", "submit", "--address", address, "--wait", "--timeout", "2400", "--",
                          "python", "-m", "cluster.pipeline", "--data", data, "--out", out, "--storage", runs,
                          "--preset", "tiny", "--config", str(cfg), timeout=2500)
    words = submit.stdout.split()
    job_id = words[1] if len(words) > 1 and words[0] == "submitted" else ""
    status = logs = None
    runtime_env: dict = {}
    if job_id:
        status = prefmine_cli("jobs", "status", job_id, "--address", address)
        logs = prefmine_cli("jobs", "logs", job_id, "--address", address)
        runtime_env = JobSubmissionClient(address).get_job_info(job_id).runtime_env or {}
    local = tmp_path_factory.mktemp("bundles") / "magazine5"
    if submit.returncode == 0 and store.is_published(out):
        local = store.fetch(out, store.StoreConfig(cache_dir=str(local.parent)))
    return SubmittedPipeline(local, submit, job_id, status, logs, runtime_env, data, runs, out)


_BUNDLE_FIXTURES = {"tiny_bundle", "tiny_bundle_job", "training_cluster"}
_BACKGROUND_JOB: dict = {}


def needs_tiny_bundle(items) -> bool:
    """Whether a selected test needs the session's tiny bundle (`bundle_path` does unless overridden)."""
    wanted = _BUNDLE_FIXTURES | ({"bundle_path"} if not os.environ.get("PREFMINE_SERVE_TEST_BUNDLE") else set())
    return any(wanted & set(getattr(it, "fixturenames", ())) for it in items)


@pytest.fixture(scope="session", autouse=True)
def tiny_bundle_in_background(request):
    """Starts the tiny bundle's training job in a background thread at the session's first test when a selected
    test needs it. The tests that do not need it run first (pytest_collection_modifyitems), the Ray-free ones
    first of all, so that most of the job's minutes overlap with them instead of adding to the suite's time."""
    import threading

    if needs_tiny_bundle(request.session.items):
        magazine5, factory = request.getfixturevalue("magazine5"), request.getfixturevalue("tmp_path_factory")
        keep = any("training_cluster" in getattr(it, "fixturenames", ()) for it in request.session.items)

        def run():
            try:
                training = _BACKGROUND_JOB["cluster"] = start_training_cluster(factory.mktemp("cluster"))
                _BACKGROUND_JOB["result"] = train_tiny_bundle(magazine5, factory, training)
            except BaseException as e:  # handed to the first test that needs the bundle
                _BACKGROUND_JOB["error"] = e
            finally:
                if not keep and "cluster" in _BACKGROUND_JOB:  # no selected test uses the cluster after the job
                    _BACKGROUND_JOB.pop("cluster").close()

        thread = _BACKGROUND_JOB["thread"] = threading.Thread(target=run, name="tiny-bundle-job", daemon=True)
        thread.start()
    yield
    training = _BACKGROUND_JOB.pop("cluster", None)
    if training is not None:  # the training cluster outlived its tests (a failed job): stopped at the end
        training.close()


def job_failure(job: SubmittedPipeline) -> str | None:
    """Why the session's training job gave no bundle (None: it did)."""
    if job.submit.returncode == 0 and (job.bundle / "manifest.json").is_file():
        return None
    return "the session's training job failed:\n" + job.submit.stdout[-2000:] + job.submit.stderr[-4000:]


@pytest.fixture(scope="session")
def tiny_bundle_job(magazine5, tmp_path_factory) -> SubmittedPipeline:
    """The session's tiny bundle job (`train_tiny_bundle`), started in the background by
    `tiny_bundle_in_background`. tests/test_cluster.py checks the job itself; every other test gets the bundle
    through `tiny_bundle`. One training run serves both, which is most of the suite's budget saved."""
    thread = _BACKGROUND_JOB.get("thread")
    if thread is None:  # started by a test's own request: train now
        training = _BACKGROUND_JOB["cluster"] = start_training_cluster(tmp_path_factory.mktemp("cluster"))
        return train_tiny_bundle(magazine5, tmp_path_factory, training)
    thread.join()
    if "error" in _BACKGROUND_JOB:
        raise _BACKGROUND_JOB["error"]
    return _BACKGROUND_JOB["result"]


@pytest.fixture(scope="session")
def training_cluster(tiny_bundle_job) -> TrainingCluster:
    """The two-node cluster and bucket the session's training job ran on (`start_training_cluster`), for the
    multi-node tests after it (tests/test_multinode.py); stopped after the last test that uses it."""
    training = _BACKGROUND_JOB.get("cluster")
    assert training is not None, "the session's training cluster is gone"
    _EARLY_STOP["training_cluster"] = training.close
    yield training
    if _EARLY_STOP.pop("training_cluster", None):
        training.close()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_job) -> Path:
    """A real bundle: encoder (MLM + rating), fused and ID-only rankers, DQN policy (or the heuristic its gate
    chose), on Magazine 5-core; trained once per session by `tiny_bundle_job`."""
    job = tiny_bundle_job
    failure = job_failure(job)
    assert failure is None, failure
    return job.bundle


@pytest.fixture(scope="session")
def bundle_path(request) -> Path:
    """The bundle the serving tests serve: the session's tiny bundle (PREFMINE_SERVE_TEST_BUNDLE overrides it,
    for developing the server against a bundle already trained)."""
    override = os.environ.get("PREFMINE_SERVE_TEST_BUNDLE")
    return Path(override) if override else Path(request.getfixturevalue("tiny_bundle"))


# Session servers that are stopped right after the last test that uses them (pytest_runtest_teardown below)
# rather than at the end of the session: an idle Ray, Serve app or dashboard still takes CPU from the tests after.
_EARLY_STOP: dict = {}


def session_experiment(bundle_path, path: Path) -> Path:
    """The session server's experiment file: arms `bundle-default` (no policy named: the bundle's own) and
    `bundle-explicit`, which names the policy the bundle's gate serves, so the arm's policy goes through the
    override path and still answers as the bundle does."""
    import yaml

    from prefmine.policy.gate import GateDecision

    gate = GateDecision.load(Path(bundle_path) / "policy") if (Path(bundle_path) / "policy").is_dir() else None
    own = "greedy" if not (Path(bundle_path) / "policy").is_dir() else (
        "learned" if gate is None or gate.uses_learned else gate.served)
    path.write_text(yaml.safe_dump({"name": "session-ab", "salt": "session-ab-1", "arms": [
        {"name": "bundle-default", "weight": 1.0}, {"name": "bundle-explicit", "weight": 1.0, "policy": own}]}))
    return path


@pytest.fixture(scope="session")
def server_proc(bundle_path, tmp_path_factory):
    """The session's served app, shared by every RPC test that needs no special server settings: `run_serve`
    (the `prefmine serve` code path) in a subprocess with its own local Ray, API keys on (live_server.API_KEY),
    direct ingress and Prometheus metrics on, a fresh feedback database (``.feedback_db``) and a two-arm A/B
    experiment whose arms both serve what the bundle serves (``.experiment``: `session_experiment`), so that
    arms, their impressions and counters are tested without changing any other test's answers. Stopped with
    SIGTERM after its last test, which must exit 0. Servers with other settings (TLS, rate limits) or that a test
    kills or rolls are started by their tests with live_server.start_server."""
    from live_server import free_port, keys_file_for, start_server

    base = tmp_path_factory.mktemp("served")
    experiment = session_experiment(bundle_path, base / "experiment.yaml")
    sp = start_server(bundle_path, keys_file_for(base / "api_keys"), base / "feedback.sqlite",
                      metrics_port=free_port(), direct=True, experiment=experiment)
    sp.feedback_db = base / "feedback.sqlite"
    sp.experiment = experiment
    stopped: list[int] = []

    def stop():
        if not stopped:
            stopped.append(sp.stop())
            assert stopped[0] == 0, "served app did not exit 0 on SIGTERM:\n" + "".join(sp.lines[-40:])

    _EARLY_STOP["server_proc"] = stop
    yield sp
    _EARLY_STOP.pop("server_proc", None)
    stop()


@pytest.fixture(scope="module")
def stub(server_proc):
    """A gRPC stub on the session's served app (one channel per module; a module may define its own `stub`)."""
    import grpc

    from prefmine.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server_proc.addr) as channel:
        yield pb_grpc.RecommenderStub(channel)


def _head_fixture(name: str, **kwargs):
    from live_server import ray_head_node

    stack = ray_head_node(**kwargs)
    address, _ = stack.__enter__()
    closed: list[bool] = []

    def stop():
        if not closed:
            closed.append(True)
            stack.__exit__(None, None, None)

    _EARLY_STOP[name] = stop
    return address, stop


@pytest.fixture(scope="session")
def ray_head():
    """The dashboard address of a real `ray start --head` node (2 CPUs, auth off) shared by the cluster tests
    (jobs submitted through `prefmine jobs`, `serve deploy`); stopped after its last test."""
    address, stop = _head_fixture("ray_head", num_cpus=2)
    try:
        yield address
    finally:
        _EARLY_STOP.pop("ray_head", None)
        stop()


@pytest.fixture(scope="session")
def ray_head_token(tmp_path_factory):
    """(dashboard address, token file) of a real Ray head with token auth (RAY_AUTH_MODE=token, its own token
    file, 1 CPU), for the control-plane tests; stopped after its last test."""
    import secrets

    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    address, stop = _head_fixture("ray_head_token", num_cpus=1, ready_on_http_error=True,
                                  env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    try:
        yield address, token
    finally:
        _EARLY_STOP.pop("ray_head_token", None)
        stop()


_LAST_USER: dict[str, str] = {}


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stops a session server of _EARLY_STOP once the last selected test that uses it has run."""
    if not _EARLY_STOP:
        return
    if not _LAST_USER:
        for it in item.session.items:
            for name in set(getattr(it, "fixturenames", ())) & {"server_proc", "ray_head", "ray_head_token",
                                                                  "training_cluster"}:
                _LAST_USER[name] = it.nodeid
    for name, stop in list(_EARLY_STOP.items()):
        if _LAST_USER.get(name) == item.nodeid:
            del _EARLY_STOP[name]
            stop()


class PostgresServer:
    """A throwaway PostgreSQL server for the tests: initdb in a temp dir, listening on 127.0.0.1 and a free port
    only, with trust authentication on loopback (production uses passwords over TLS; see docs/feedback-store.md).
    As root it runs as the `postgres` OS user (initdb refuses root). wal_writer_delay is at its maximum (10 s),
    so a commit that did not flush the WAL itself is lost by an immediate stop: the durability tests notice."""

    def __init__(self, bindir: Path, base: Path, port: int, as_user: list[str]):
        self.bindir, self.base, self.port, self.as_user = bindir, base, port, as_user
        self.data, self.log = base / "data", base / "server.log"
        self._n = 0

    def run(self, tool: str, *args: str) -> None:
        import subprocess

        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True,
                       timeout=120, cwd=self.base)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """The DSN of a new empty database (one per test keeps tests independent)."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (binaries from $PREFMINE_PG_BINDIR, PATH or /usr/lib/postgresql;
    cluster/install_services.sh installs them)."""
    import pwd
    import shutil
    import socket
    import tempfile

    bindir = os.environ.get("PREFMINE_PG_BINDIR")
    if not bindir:
        found = shutil.which("initdb")
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        bindir = str(Path(found).parent) if found else (str(versions[-1].parent) if versions else "")
    if not bindir or not (Path(bindir) / "initdb").is_file():
        msg = "PostgreSQL is not installed (run cluster/install_services.sh)"
        if os.environ.get("CI"):  # CI installs it (.ci/run): a skip there would hide the backend's tests
            pytest.fail(msg)
        pytest.skip(msg)
    base = Path(tempfile.mkdtemp(prefix="prefmine-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = PostgresServer(Path(bindir), base, port, as_user)
    server.run("initdb", "-D", str(server.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    with open(server.data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
                   "max_connections = 40\nshared_buffers = 16MB\nfsync = on\nwal_writer_delay = 10000ms\n")
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop("fast")
        finally:
            shutil.rmtree(base, ignore_errors=True)


# Markers (registered in pyproject.toml, explained in docs/testing.md). Tests that start Ray, train a model, or
# start Ray Serve or a `ray start` node are marked here from the fixtures they use, so a new test that takes
# one of these fixtures is never counted as fast by accident; a test may also mark itself `slow`.
_SLOW_FIXTURES = {"tiny_bundle", "tiny_bundle_job", "ray_session", "ray_head", "ray_head_token", "server_proc",
                  "bundle_path", "training_cluster"}
_SERVE_MODULES = {"test_serve_faults", "test_serve_feedback", "test_serve_deploy"}
_CLUSTER_FIXTURES = {"ray_head", "ray_head_token", "training_cluster"}


def _group_modules(items, fixture: str) -> None:
    """Moves the modules with a test that uses the session server `fixture` next to the last such module (order
    kept otherwise), so the server is started once and stopped after them instead of idling between files, and
    is started after the tiny bundle has been trained by the files before."""
    users = {it.module.__name__ for it in items if it.module and fixture in getattr(it, "fixturenames", ())}
    if len(users) < 2:
        return
    last = max(i for i, it in enumerate(items) if it.module and it.module.__name__ in users)
    moved = [it for it in items[:last + 1] if it.module and it.module.__name__ in users]
    kept = [it for it in items[:last + 1] if not (it.module and it.module.__name__ in users)]
    items[:] = kept + moved + items[last + 1:]


def _fast_modules_first(items) -> None:
    """Orders modules (each kept whole, so module fixtures start once) in three tiers: modules with no test that
    is marked slow or needs the tiny bundle, then slow modules that do not need it, then those that need it, the
    ones on the bundle's training cluster first (it idles until they have run). The bundle's training job runs in
    the background meanwhile (`tiny_bundle_in_background`). Needs the markers set."""
    by_module: dict[str, list] = {}
    for it in items:
        by_module.setdefault(it.module.__name__ if it.module else "", []).append(it)
    tiers = {m: (2 if any("training_cluster" in getattr(it, "fixturenames", ()) for it in tests) else 3)
             if needs_tiny_bundle(tests) else 1 if any(it.get_closest_marker("slow") for it in tests) else 0
             for m, tests in by_module.items()}  # the training cluster's tests first: it is stopped after them
    items.sort(key=lambda it: tiers[it.module.__name__ if it.module else ""])  # stable: order kept within a tier


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if fixtures & _SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "server_proc" in fixtures or module in _SERVE_MODULES:
            item.add_marker(pytest.mark.serve)
            item.add_marker(pytest.mark.slow)
        if fixtures & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
    _fast_modules_first(items)
    for fixture in ("ray_head", "server_proc"):
        _group_modules(items, fixture)
