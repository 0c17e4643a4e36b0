"""The `prefmine` command line (contract in DESIGN.md): data, train, evaluate, serve, client, catalog, ads, demo.

Each sub-command is a thin parser over a function in prefmine/, cluster/ or serve/; imports are deferred (the
parser needs only the source registry, `prefmine.data.sources`, for the `--source` choices) so `prefmine --help`
stays quick and `prefmine data prepare --local` never imports Ray. Bad input exits with status 2 and a
message naming the option or field; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _data_prepare(a) -> int:
    from prefmine.data.prepare import prepare
    from prefmine.data.privacy import Pseudonymiser

    runner, engine = None, "local"
    if not a.local:
        from cluster.prepare_job import ray_data_runner

        runner, engine = ray_data_runner, "ray-data"
    m = prepare(a.source, a.raw, a.out, a.category, pseudonymiser=Pseudonymiser(allow_demo=a.demo_key),
                on_bad_rows=a.on_bad_rows, rating_range=tuple(a.rating_range) if a.rating_range else None,
                runner=runner, buckets=a.buckets, engine=engine, tombstones=a.tombstones, progress=sys.stderr,
                catalog_feedback=a.catalog_feedback)
    print(json.dumps({"out": a.out, **m["counts"], "bad_rows_skipped": m["bad_rows"]["skipped"],
                      "bad_rows": m["bad_rows"]["by_reason"], "pii_scrubbed": m["pii_scrubbed"],
                      "tombstoned_rows_dropped": m["tombstoned"]["rows_dropped"],
                      "data_hash": m["data_hash"], "preparation": m["preparation"]}, indent=2))
    return 0


def _data_synth(a) -> int:
    from prefmine.data.rows import RawDataError
    from prefmine.data.synth.config import SynthConfig
    from prefmine.data.synth.generate import synth

    try:
        info = synth(a.out, SynthConfig(users=a.users, items=a.items, events=a.events, seed=a.seed, fmt=a.format,
                                        events_per_part=a.events_per_part, content_share=a.content_share))
    except ValueError as e:
        raise RawDataError(f"data synth: {e}") from e
    print(json.dumps(info, indent=2))
    return 0


def _data_forget(a) -> int:
    from prefmine.data.forget import forget

    users = _raw_ids(a.user or (), a.user_file)
    if not users:
        a.parser.error("give the person's raw id: --user RAW_ID, --user - (stdin) or --user-file FILE")
    one = len(users) == 1 and a.user == users  # one id on the command line: the one-person report, as before
    report = forget(a.data, users[0] if one else users, feedback=a.feedback, bundles=a.bundle or (),
                    tombstones=a.tombstones)
    if report.get("tombstones") is None:
        print("prefmine: warning: no tombstone list (give --tombstones, $PREFMINE_TOMBSTONES or a SQLite "
              "--feedback): a running server and a new `data prepare` do not learn of this erasure",
              file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def _raw_ids(users, user_file) -> list[str]:
    """Raw ids from --user (``-``: stdin) and --user-file, one a line (line ends and blank lines dropped; the
    pseudonymiser normalises the id itself), so an id need not appear in argv (shell history, ps)."""
    out: list[str] = []
    for u in users:
        if u == "-":
            out.extend(line.rstrip("\r\n") for line in sys.stdin)
        else:
            out.append(u)
    if user_file:
        with open(user_file, encoding="utf-8") as f:
            out.extend(line.rstrip("\r\n") for line in f)
    return [u for u in out if u.strip()]


def _data_download(a) -> int:
    from prefmine.data.download import download

    print(download(a.source, a.out, a.category))
    return 0


def _train(a) -> int:
    from cluster.pipeline import STAGES, train_bundle

    metrics = train_bundle(a.data, a.out, (a.stage,) if a.stage else STAGES, a.preset, a.config,
                           a.keep_checkpoints, a.set + ([f"dist.storage={a.storage}"] if a.storage else []))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "history"} if isinstance(v, dict) else v
                      for k, v in metrics.items()}, indent=2, default=str)[:6000])
    return 0


def _evaluate(a) -> int:
    from pathlib import Path

    from cluster.evaluate_job import run_evaluation

    if a.out_dir and Path(a.out_dir).exists() and not Path(a.out_dir).is_dir():
        print(f"prefmine: error: --out-dir {a.out_dir} exists and is not a directory", file=sys.stderr)
        return 2  # checked before the evaluation, not after minutes of it
    from prefmine.store import fetch, is_uri

    if not is_uri(a.bundle):  # a local folder is read as it is (baselines need no model); reports go into it
        run_evaluation(a.data, a.bundle, a.json, policy_sessions=a.policy_sessions, out_dir=a.out_dir)
        return 0
    # a cloud URI is downloaded once per bundle version into a cache that must stay as published: the reports are
    # written elsewhere (--out-dir, else a temp folder uploaded to <bundle>/reports/) and nothing is recorded
    import tempfile

    from prefmine.storage import join, put_dir

    out_dir = a.out_dir or tempfile.mkdtemp(prefix="prefmine-reports-")
    run_evaluation(a.data, str(fetch(a.bundle)), a.json, policy_sessions=a.policy_sessions, out_dir=out_dir,
                   record=False)
    if not a.out_dir:
        put_dir(out_dir, join(a.bundle, "reports"))
        print(f"reports uploaded: {join(a.bundle, 'reports')}", flush=True)
    return 0


def _serve(a) -> int:
    if a.serve_command == "keys":
        return _serve_keys(a)
    missing = [opt for opt, v in (("--bundle", a.bundle), ("--grpc-port", a.grpc_port)) if v is None]
    if missing:
        a.parser.error(f"the following arguments are required: {', '.join(missing)}")
    from serve.run import run_serve

    ads = None
    if a.config or a.set:  # the config tree's `ads` section: Rank's auction (docs/configuration.md)
        from dataclasses import asdict

        from prefmine.train_config import load

        other = [item for item in a.set if not item.startswith("ads.")]
        if other:
            a.parser.error(f"--set {other[0]}: serving takes the ads section only (ads.KEY=VALUE)")
        ads = asdict(load("tiny", a.config, a.set).ads)
    # a URI is checked here from its manifest; every replica fetches it into its own node's cache (serve.served)
    tls = {"cert_file": a.tls_cert, "key_file": a.tls_key, "client_ca_file": a.tls_client_ca}
    return run_serve(a.bundle, a.grpc_port, api_keys_file=a.api_keys_file, feedback_db=a.feedback_db,
                     metrics_port=a.metrics_port, direct_port=a.direct_port, insecure=a.insecure,
                     reflection=a.reflection, tls=tls, rate_limit=a.rate_limit, rate_burst=a.rate_burst,
                     tombstones=a.tombstones, experiment=a.experiment, placement=a.placement, ads=ads)


def _serve_keys(a) -> int:
    """`prefmine serve keys add`: a fresh key, its hash appended to the file, the key printed once;
    `prefmine serve keys hash`: the key-file line for a key read from stdin (to convert an old plain key)."""
    from serve.auth import add_key, hash_key, parse_line, parse_scopes

    try:
        if a.keys_command == "add":
            key = add_key(a.keys_file, a.name, a.scope)
            print(f"added key {a.name!r} ({a.scope}) to {a.keys_file}; the key (shown only now):", file=sys.stderr)
            print(key)
            return 0
        key = sys.stdin.readline().strip()
        if not key:
            print("prefmine: error: no key on stdin", file=sys.stderr)
            return 2
        line = f"{a.name} {','.join(sorted(parse_scopes(a.scope)))} {hash_key(key)}"
        parse_line(line)
        print(line)
        return 0
    except ValueError as e:
        print(f"prefmine: error: {e}", file=sys.stderr)
        return 2


def _client_recommend(a) -> int:
    from serve.client import client_recommend
    from serve.tls import channel_credentials

    creds = None
    if a.tls or a.tls_ca or a.tls_cert:
        creds = channel_credentials(a.tls_ca, a.tls_cert, a.tls_key)
    return client_recommend(a.addr, a.user, a.k, a.exclude or (), credentials=creds)


def _catalog_load(a) -> int:
    from prefmine.catalog.load import load_file
    from prefmine.catalog.state import CatalogState
    from prefmine.feedback import open_feedback_store

    store = open_feedback_store(a.feedback)
    try:
        base = None
        if a.items:
            import pandas as pd

            base = pd.read_parquet(a.items, columns=["item"])
        state = CatalogState(base)
        state.apply(store.read_catalog_since(0, limit=10**9))
        res = load_file(store, a.file, known=frozenset(state.items), key_prefix=a.key)
    finally:
        store.close()
    for e in res.errors[:50]:
        print(f"refused {e}", file=sys.stderr)
    print(json.dumps({"stored": res.stored, "refused": len(res.errors), "last_id": res.last_id}))
    return 1 if res.errors else 0


def _ads_campaigns(a) -> int:
    """`prefmine ads campaigns write FILE | list | pause ID` on the feedback store's ad tables."""
    import time

    from prefmine.feedback import open_feedback_store

    store = open_feedback_store(a.feedback, create=a.campaigns_command == "write")
    try:
        if a.campaigns_command == "write":
            from prefmine.ads.campaign_ops import write_campaign_file

            res = write_campaign_file(store.ads, a.file)
            for line, cid, reason in res.refused[:50]:
                print(f"refused line {line} (campaign {cid!r}): {reason}", file=sys.stderr)
            print(json.dumps({"stored": res.stored, "refused": len(res.refused)}))
            return 1 if res.refused else 0
        if a.campaigns_command == "list":
            from prefmine.ads.campaign_ops import campaign_report
            from prefmine.serving.ad_auction import utc_day

            rows = campaign_report(store.ads, a.day or utc_day(time.time())[0])
            print(json.dumps(rows, indent=2))
            return 0
        if not store.ads.set_active(a.campaign_id, False):
            print(f"prefmine: error: campaign {a.campaign_id!r} is not in {a.feedback}", file=sys.stderr)
            return 2
        print(json.dumps({"paused": a.campaign_id}))
        return 0
    finally:
        store.close()


def _experiments_report(a) -> int:
    from prefmine.experiments import format_report, load_experiment, report
    from prefmine.feedback import open_feedback_store

    try:
        experiment = load_experiment(a.config)
    except ValueError as e:
        a.parser.error(str(e))
    store = open_feedback_store(a.feedback, create=False)
    try:
        rep = report(store, experiment)
    finally:
        store.close()
    print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 0


def _update_loop(a) -> int:
    from cluster.update_loop import run_cli

    return run_cli(a)


def _demo(a) -> int:
    from prefmine.cli.demo import run_demo

    return run_demo(a.dataset, a.workdir, a.raw, a.grpc_port, a.preset)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's log records and every worker's output here (default: progress lines only; "
                        "Ray's logs go to ray.log, named on start)")


def build_parser() -> argparse.ArgumentParser:
    from prefmine.data.sources import SOURCES, downloadable
    from prefmine.data.sources import names as source_names

    p = argparse.ArgumentParser(prog="prefmine", description="E-commerce preference mining and recommendation.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare or download data").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="raw files -> canonical dataset directory")
    prep.add_argument("--source", required=True, choices=source_names(),
                      help="; ".join(f"{n}: {s.LAYOUT}" for n, s in SOURCES.items()))
    prep.add_argument("--raw", help="raw folder (default: $PREFMINE_DATA_DIR/<source>)")
    prep.add_argument("--category", help="Amazon category (e.g. Magazine_Subscriptions) or RecBole data set name")
    prep.add_argument("--out", required=True)
    prep.add_argument("--on-bad-rows", choices=["error", "skip"], default="error",
                      help="error: stop at the first bad row, naming file, line and field; skip: drop and count")
    prep.add_argument("--rating-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                      help="declared rating range (default per source: Amazon 1-5, MovieLens 0.5-5, ...)")
    prep.add_argument("--demo-key", action="store_true",
                      help="allow the public demo pseudonymisation key when none is configured (throwaway data)")
    prep.add_argument("--buckets", type=int, help="user buckets for the split stage (default: ~400k rows each)")
    prep.add_argument("--local", action="store_true", help="run the stages in this process instead of Ray Data")
    prep.add_argument("--tombstones", help="list of erased pseudonyms (`data forget`) whose rows are dropped "
                                           "(default: $PREFMINE_TOMBSTONES)")
    prep.add_argument("--catalog-feedback", metavar="FILE|DSN",
                      help="feedback store whose catalogue changes (WriteCatalog, catalog load) are folded into the "
                           "items: new items added, upserted titles, brands and categories applied")
    _add_verbose(prep)
    prep.set_defaults(func=_data_prepare)
    syn = data.add_parser("synth", help="write a synthetic platform event log (for scale tests)")
    syn.add_argument("--users", type=int, required=True)
    syn.add_argument("--items", type=int, required=True)
    syn.add_argument("--events", type=int, required=True)
    syn.add_argument("--out", required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    syn.add_argument("--events-per-part", type=int, default=1_000_000)
    syn.add_argument("--content-share", type=float, default=0.0,
                     help="share of items that are content (article, video) with a publication time")
    syn.set_defaults(func=_data_synth)
    fg = data.add_parser("forget", help="erase one person from a dataset and the feedback log; mark old bundles")
    fg.add_argument("--data", required=True, help="prepared dataset directory")
    fg.add_argument("--user", action="append",
                    help="the person's raw user id; repeatable; `-` reads ids from stdin, one a line")
    fg.add_argument("--user-file", help="file of raw user ids, one a line")
    fg.add_argument("--feedback", help="serving feedback log (SQLite path or postgresql:// DSN) to erase from as well")
    fg.add_argument("--bundle", action="append", help="bundle (or folder of bundles) to mark; repeatable")
    fg.add_argument("--tombstones", help="tombstone list of erased pseudonyms to add them to (default: "
                                         "$PREFMINE_TOMBSTONES, else FEEDBACK.tombstones beside a SQLite --feedback)")
    fg.set_defaults(func=_data_forget, parser=fg)
    dl = data.add_parser("download", help="fetch raw files from the original publishers (needs internet)")
    dl.add_argument("--source", required=True, choices=downloadable())
    dl.add_argument("--category", default="Magazine_Subscriptions")
    dl.add_argument("--out", required=True)
    dl.set_defaults(func=_data_download)

    tr = sub.add_parser("train", help="train encoder, ranker and policy (or one stage) into a bundle")
    tr.add_argument("stage", nargs="?", choices=["encoder", "ranker", "policy"])
    tr.add_argument("--data", required=True)
    tr.add_argument("--out", required=True, help="bundle location: a directory or a URI (s3://, gs://, file://)")
    tr.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    tr.add_argument("--config", help="YAML config tree: any of the sections encoder, embed, ranker, retrieval, "
                    "policy, simulator, update, dist (docs/configuration.md)")
    tr.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                    help="config overrides applied after --config, e.g. ranker.epochs=3 dist.num_workers=1")
    tr.add_argument("--storage", default=os.environ.get("PREFMINE_STORAGE") or None,
                    help="where Ray Train runs and checkpoints live (a URI such as s3://bucket/run, so nodes share "
                    "no disk with the driver): the same as --set dist.storage=URI (default: $PREFMINE_STORAGE)")
    tr.add_argument("--keep-checkpoints", action="store_true",
                    help="publish each run's Ray Train checkpoint (DeepSpeed states) in the bundle's .train/ too")
    _add_verbose(tr)
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="test metrics of every model and the policy")
    ev.add_argument("--data", required=True)
    ev.add_argument("--bundle", required=True)
    ev.add_argument("--json", help="also write the report JSON here")
    ev.add_argument("--out-dir", help="folder for evaluation.json, evaluation.md and evaluation_ndcg_at_k.png "
                                      "(default: BUNDLE/reports)")
    ev.add_argument("--policy-sessions", type=int, default=1000)
    _add_verbose(ev)
    ev.set_defaults(func=_evaluate)

    sv = sub.add_parser("serve", help="serve a bundle over gRPC with Ray Serve")
    sv.add_argument("--bundle", help="model bundle directory, or URI (s3://bucket/prefix, gs://, hdfs://: every "
                                     "replica fetches it into its node's cache, $PREFMINE_BUNDLE_CACHE or "
                                     "~/.cache/prefmine/bundles; no disk shared with this machine) (required to "
                                     "serve)")
    sv.add_argument("--grpc-port", type=int, help="port of Serve's gRPC proxy (required to serve)")
    sv.add_argument("--api-keys-file", default=None,
                    help="hashed API keys, `name scopes sha256:<hex>` a line (`prefmine serve keys add`); clients "
                         "send x-api-key (default $PREFMINE_API_KEYS_FILE; without keys the server refuses to start "
                         "unless --insecure)")
    sv.add_argument("--insecure", action="store_true",
                    help="serve without API keys: every caller is accepted (local demo only)")
    sv.add_argument("--reflection", action="store_true", help="turn gRPC server reflection on (off by default)")
    sv.add_argument("--rate-limit", type=float, default=None,
                    help="requests a second per API key and ingress replica (default 100; 0: no limit)")
    sv.add_argument("--rate-burst", type=int, default=None, help="burst of the per-key rate limit (default 200)")
    sv.add_argument("--tls-cert", help="PEM certificate chain: the --direct-port speaks TLS")
    sv.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sv.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    sv.add_argument("--feedback-db", default=None,
                    help="SQLite file or postgresql:// DSN RecordFeedback appends to (default: feedback.sqlite beside the bundle; several nodes: a postgresql:// DSN)")
    sv.add_argument("--tombstones", default=None,
                    help="list of erased pseudonyms (`data forget`) the server stops answering for within seconds "
                         "(default: $PREFMINE_TOMBSTONES, else FEEDBACK_DB.tombstones beside a SQLite feedback db)")
    sv.add_argument("--metrics-port", type=int, default=None,
                    help="port of the Prometheus endpoint of the Ray this command starts (default: Ray picks one)")
    sv.add_argument("--direct-port", type=int, default=None,
                    help="also answer gRPC straight from the ingress replica on this port (Serve's direct ingress: "
                         "no proxy hop, lower latency; further ingress replicas take the next ports)")
    sv.add_argument("--experiment", default=None,
                    help="A/B experiment file (YAML/JSON: name, salt, arms with weight and policy): each user's "
                         "arm orders their slates; `prefmine experiments report --config` reads the same file")
    sv.add_argument("--placement", default=None,
                    help="YAML/JSON file placing the replicas on a multi-node cluster: proxy_location (EveryNode "
                         "or HeadOnly) and per deployment num_replicas, max_replicas_per_node and custom resources "
                         "(docs/cluster.md)")
    sv.add_argument("--config", default=None,
                    help="config tree file (YAML/JSON, as `train --config`): serving runs Rank's ad auction with its "
                         "`ads` section (reserves, pacing_tolerance, freq_cap, freq_window_s, hold_ttl_s)")
    sv.add_argument("--set", nargs="*", default=[], metavar="ads.KEY=VALUE",
                    help="ads overrides applied after --config, e.g. ads.hold_ttl_s=300 'ads.reserves=[0.1,0.05]'")
    sv.set_defaults(func=_serve, parser=sv, serve_command=None)
    keys = sv.add_subparsers(dest="serve_command").add_parser(
        "keys", help="manage the hashed API-key file").add_subparsers(dest="keys_command", required=True)
    kadd = keys.add_parser("add", help="make a key, append its hash to the file, print the key once")
    khash = keys.add_parser("hash", help="print the key-file line for a key read from stdin")
    for kp in (kadd, khash):
        kp.add_argument("--name", required=True, help="who holds the key (letters, digits, _ . @ -)")
        kp.add_argument("--scope", required=True,
                        help="RPCs it may call, e.g. Recommend,RecordFeedback, or * (every RPC but WriteCatalog "
                             "and WriteCampaigns, which a key may call only when its scope names them: "
                             "*,WriteCampaigns)")
    kadd.add_argument("--keys-file", required=True, help="the key file (created with mode 0600 if missing)")

    cl = sub.add_parser("client", help="call a running server").add_subparsers(dest="client_command", required=True)
    rec = cl.add_parser("recommend")
    rec.add_argument("--addr", required=True, help="HOST:PORT")
    rec.add_argument("--user", required=True, help="raw user id")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--exclude", nargs="*", help="raw item ids to exclude")
    rec.add_argument("--tls", action="store_true", help="connect with TLS (the system's CA roots unless --tls-ca)")
    rec.add_argument("--tls-ca", help="PEM CA (or self-signed certificate) to trust; implies --tls")
    rec.add_argument("--tls-cert", help="PEM client certificate (mutual TLS); implies --tls")
    rec.add_argument("--tls-key", help="PEM private key of --tls-cert")
    rec.set_defaults(func=_client_recommend)

    from cluster.jobs import add_parser as add_jobs_parser

    add_jobs_parser(sub)

    from cluster.update_loop import add_arguments as add_loop_arguments

    up = sub.add_parser("update", help="incremental updates").add_subparsers(dest="update_command", required=True)
    upl = up.add_parser("loop", help="every N minutes: build a candidate from new feedback, guard it, roll it in")
    add_loop_arguments(upl)
    upl.set_defaults(func=_update_loop, parser=upl)

    ex = sub.add_parser("experiments", help="A/B experiments").add_subparsers(dest="experiments_command",
                                                                            required=True)
    exr = ex.add_parser("report", help="each arm's click and purchase rates with 95% intervals")
    exr.add_argument("--feedback", required=True, help="the feedback store: SQLite file or postgresql:// DSN")
    exr.add_argument("--config", required=True,
                     help="the experiment (YAML/JSON), or the Serve config whose args carry `experiment`")
    exr.add_argument("--json", action="store_true", help="JSON instead of a table")
    exr.set_defaults(func=_experiments_report, parser=exr)

    cat = sub.add_parser("catalog", help="the live catalogue").add_subparsers(dest="catalog_command", required=True)
    cload = cat.add_parser("load", help="validate a JSONL/CSV file of item rows and log them in the feedback store")
    cload.add_argument("--feedback", required=True, help="the feedback store: SQLite file or postgresql:// DSN")
    cload.add_argument("--file", required=True, help="items.jsonl or items.csv (docs/shop.md: row fields)")
    cload.add_argument("--items", help="the bundle's catalog/items.parquet: its items may be upserted without a title")
    cload.add_argument("--key", help="idempotency key prefix: rerunning the same load stores each batch once")
    cload.set_defaults(func=_catalog_load)

    ads = sub.add_parser("ads", help="sponsored items").add_subparsers(dest="ads_command", required=True)
    camp = ads.add_parser("campaigns", help="advertisers' campaigns in the feedback store (docs/shop.md)"
                          ).add_subparsers(dest="campaigns_command", required=True)
    cw = camp.add_parser("write", help="write campaigns from a CSV or JSONL file (campaign_id, daily_budget, "
                                       "freq_cap?, active?); bad rows are refused by line and field, good ones written")
    cw.add_argument("file", help="campaigns.csv (header row) or campaigns.jsonl")
    cl_ = camp.add_parser("list", help="each campaign with the day's spent, held and remaining budget (JSON)")
    cl_.add_argument("--day", help="UTC date YYYY-MM-DD (default: today)")
    cp = camp.add_parser("pause", help="take a campaign out of every auction from now on (write it active to resume)")
    cp.add_argument("campaign_id")
    for sp_ in (cw, cl_, cp):
        sp_.add_argument("--feedback", required=True, help="the feedback store: SQLite file or postgresql:// DSN")
        sp_.set_defaults(func=_ads_campaigns)

    demo = sub.add_parser("demo", help="the main job: prepare, train, evaluate, serve and query, end to end")
    demo.add_argument("--dataset", choices=["magazine", "movielens"], default="magazine")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--raw", help="raw data folder laid out like ../shared/data (default: $PREFMINE_DATA_DIR)")
    demo.add_argument("--grpc-port", type=int, default=0, help="0 picks a free port")
    demo.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    _add_verbose(demo)
    demo.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        import os

        os.environ["PREFMINE_VERBOSE"] = "1"  # read by cluster.ray_env, here and in the processes started from here
    from prefmine.config import ConfigError
    from prefmine.data.privacy import MissingKeyError
    from prefmine.data.rows import RawDataError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, RawDataError, MissingKeyError, FileNotFoundError, FileExistsError) as e:
        print(f"prefmine: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
