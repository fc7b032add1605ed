"""The ``livecomments`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from livecomments import config


def _serve(args: argparse.Namespace) -> int:
    from livecomments.node import configure_logging, raise_nofile_limit, serve

    settings = config.load(args)
    configure_logging(settings.log_level)
    raise_nofile_limit()
    trio.run(serve, settings)
    return 0


def _token(args: argparse.Namespace) -> int:
    from livecomments.auth import ROLES, TokenIssuer, signing_key

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
