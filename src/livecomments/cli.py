"""The ``livecomments`` command."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import trio

from livecomments import config


def _serve(args: argparse.Namespace) -> int:
    from livecomments.serve import configure_logging, raise_nofile_limit, serve

    settings = config.load(args)
    configure_logging(settings.log_level)
    raise_nofile_limit()
    trio.run(serve, settings)
    return 0


def _token(args: argparse.Namespace) -> int:
    from domain.identity import ROLES, TokenIssuer, signing_key

    settings = config.load(args)
    roles = tuple(args.role or ("viewer",))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        print(f"livecomments token: unknown role(s) {', '.join(bad)}; choose from {', '.join(ROLES)}", file=sys.stderr)
        return 2
    streams = tuple(v.strip() for v in (args.streams or "").split(",") if v.strip())
    issuer = TokenIssuer(signing_key(settings.jwt_secret, settings.data_dir))
    print(issuer.issue(args.user, args.name or args.user, roles, streams, ttl_s=args.ttl_s))
    return 0


def _role(args: argparse.Namespace) -> int:
    """``livecomments ingest | rms | persist | moderate | forward``: one process of a cluster (livecomments.cluster_nodes)."""
    from livecomments import cluster_nodes as roles
    from livecomments.serve import configure_logging, raise_nofile_limit

    settings = config.load(args, **roles.CLUSTER_DEFAULTS)
    if not settings.redis_url:
        print(f"livecomments {args.command}: set LIVECOMMENTS_REDIS_URL (or --redis-url)", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    raise_nofile_limit()
    run = {
        "ingest": roles.run_ingest,
        "rms": roles.run_rms,
        "persist": roles.run_persist,
        "moderate": roles.run_moderate,
        "forward": roles.run_forward,
    }[args.command]
    trio.run(run, settings)
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from livecomments.cluster import main as cluster_main

    return cluster_main(args)


def _db(args: argparse.Namespace) -> int:
    try:
        from adapters.scylla.store import migrate
    except ImportError:
        print("livecomments db migrate: the CQL store is not available", file=sys.stderr)
        return 2
    settings = config.load(args)
    hosts = [h.strip() for h in settings.scylla_hosts.split(",") if h.strip()]
    report = trio.run(
        functools.partial(
            migrate, hosts, settings.scylla_keyspace, settings.comment_ttl_s, replication=settings.scylla_replication
        )
    )
    print(f"livecomments db migrate: keyspace {settings.scylla_keyspace} on {settings.scylla_hosts}: {report}")
    return 0


def _bench(argv: list[str]) -> int:
    import importlib

    try:
        bench = importlib.import_module("benches.cli")
    except ImportError:
        print("livecomments bench: the benches package is not installed", file=sys.stderr)
        return 2
    return int(bench.main(argv))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livecomments", description="Live-stream comments on Trio.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="the all-in-one server (ingest + rms, SQLite, one port)")
    config.add_flags(serve)
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a signed token")
    token.add_argument("--user", required=True, help="user id (the token's sub)")
    token.add_argument("--name", default=None, help="display name (default: the user id)")
    token.add_argument("--role", action="append", help="viewer | verified | moderator | admin (repeatable)")
    token.add_argument("--streams", default="", help="video ids this user is the streamer of, comma-separated")
    token.add_argument("--ttl-s", type=int, default=86400, help="lifetime in seconds")
    config.add_flags(token, only=("data_dir", "jwt_secret"))
    token.set_defaults(func=_token)

    for role, text in (
        ("ingest", "cluster mode: a stateless comment service (posting, moderation) on Redis"),
        ("rms", "cluster mode: a realtime node (SSE, WebSocket, long-poll, snapshots) on Redis"),
        ("persist", "cluster mode: drain the Redis hot store into the cold store"),
        ("moderate", "cluster mode: automod workers draining the moderation streams"),
        ("forward", "cluster mode, regions: send this region's comments to the regions with viewers of them"),
    ):
        rp = sub.add_parser(role, help=text)
        config.add_flags(rp)
        rp.set_defaults(func=_role)

    cluster = sub.add_parser("cluster", help="a local cluster: Redis, rms and ingest nodes, persist, nginx edge")
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a local cluster in the foreground; Ctrl-C stops all of it")
    up.add_argument("--rms", type=int, default=2, help="rms nodes (default 2)")
    up.add_argument("--ingest", type=int, default=2, help="ingest nodes (default 2)")
    up.add_argument("--edge-port", type=int, default=8080, help="port of the nginx edge (default 8080; 0: any free)")
    up.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    up.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                    help="start a Redis Cluster of N (>= 3) masters, --redis-replicas replicas each, instead of one Redis")
    up.add_argument("--redis-sentinel", action="store_true",
                    help="start a Sentinel setup instead of one Redis: a primary, --redis-replicas replica(s), 3 sentinels")
    up.add_argument("--redis-replicas", type=int, default=1, help="replicas per master with --redis-cluster/--redis-sentinel (default 1)")
    up.add_argument("--run-dir", default=None, help="directory for configs, logs, data (default: a new temp dir)")
    up.add_argument("--tls", action="store_true", help="edge speaks HTTPS + HTTP/2 with a self-signed certificate")
    up.add_argument("--no-persist", action="store_true", help="do not start the persist worker")
    up.add_argument(
        "--restart-backoff-s", type=float, default=0.5,
        help="delay before restarting a process that died (default 0.5); doubles while it keeps dying",
    )
    up.add_argument(
        "--restart-backoff-max-s", type=float, default=30.0, help="longest delay before a restart (default 30)"
    )
    up.add_argument(
        "--redis-appendfsync", choices=("always", "everysec"), default="always",
        help="fsync policy of the Redis started here (default always: no acknowledged comment lost if Redis dies)",
    )
    up.add_argument(
        "--regions", type=int, default=1,
        help="start this many regions (default 1), each with its own Redis, nodes and edge (docs/operations.md, Regions)",
    )
    up.add_argument(
        "--region-delay-ms", type=float, default=40.0,
        help="one-way delay of the links between regions (a delaying proxy; default 40)",
    )
    up.set_defaults(func=_cluster)
    status = csub.add_parser("status", help="each process of a running cluster: role, health, load, restarts")
    status.add_argument(
        "--run-dir", default=None,
        help="the cluster's run directory (default: the newest livecomments-cluster-* in the temp dir)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout-s", type=float, default=2.0, help="limit on each probe (default 2)")
    status.set_defaults(func=_cluster)

    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_command", required=True)
    mig = dsub.add_parser("migrate", help="apply the CQL schema to LIVECOMMENTS_SCYLLA_HOSTS")
    config.add_flags(mig, only=("scylla_hosts", "scylla_keyspace", "scylla_replication", "comment_ttl_s"))
    mig.set_defaults(func=_db)

    sub.add_parser("bench", help="run a benchmark scenario (see livecomments bench --help)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        return _bench(args_list[1:])
    p = parser()
    args = p.parse_args(args_list)
    try:
        return int(args.func(args))
    except ValueError as e:
        print(f"livecomments {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
