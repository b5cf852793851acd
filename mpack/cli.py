"""The ``mpackhub`` command: run and administer a hub, and clone/fetch/pull/push as a client.

Server-side commands (serve, admin, jobs, gc) act on the hub configured by the
environment (README); client commands talk HTTP to a hub. Errors print one
line and exit non-zero.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mpack.client import commands as client_cli
from mpack.format.errors import MuseError
from mpack.http.logs import configure_logging
from mpack.http.serving import HubServer, exec_server
from mpack.hub import auth, gc, jobs
from mpack.hub.bootstrap import build_hub
from mpack.hub.settings import Settings, secrets_path


def _hub():
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level)
    return build_hub(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.bind:
        os.environ["MPACKHUB_BIND"] = args.bind  # the workers read the environment too
    settings = Settings.from_env(os.environ)
    build_hub(settings).db.close()  # create the home, database and secrets before the workers start
    server = HubServer()
    print(f"mpackhub {settings.public_url} (listening on {server.values['bind']})", file=sys.stderr)
    print(f"  home: {settings.home}", file=sys.stderr)
    if not os.environ.get("MPACKHUB_ADMIN_TOKEN"):
        print(f"  admin token: in {secrets_path(settings.home)} (key admin_token)", file=sys.stderr)
    sys.stderr.flush()
    exec_server()  # a fresh interpreter, so that metrics start in multiprocess mode
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    _, token = auth.create_user(_hub(), args.name)
    print(token)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    overview = jobs.overview(_hub(), limit=args.limit)
    if args.json:
        print(json.dumps(overview, indent=2))
        return 0
    print("  ".join(f"{status}: {count}" for status, count in sorted(overview["counts"].items())) or "no jobs")
    for job in overview["recent"]:
        error = job.get("last_error") or ""
        print(f"{job['job_id'][:12]}  {job['status']:8}  {job['job_type']:24}  attempt {job['attempt']}  {error}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    hub = _hub()
    repo, dry_run = gc.parse_request({"repo": args.repo, "dry_run": args.dry_run} if args.repo else {"dry_run": args.dry_run})
    print(json.dumps(gc.run_gc(hub, repo=repo, dry_run=dry_run).as_dict()))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mpackhub", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub under gunicorn (settings from MPACKHUB_* variables)")
    serve.add_argument("--bind", help="host:port (default MPACKHUB_BIND or 127.0.0.1:8000)")
    serve.set_defaults(run=cmd_serve)
    admin = sub.add_parser("admin", help="administer users").add_subparsers(dest="admin_command", required=True)
    create = admin.add_parser("create-user", help="create a user and print its API token (shown once)")
    create.add_argument("name")
    create.set_defaults(run=cmd_create_user)
    job_list = sub.add_parser("jobs", help="job counts by status and the recent jobs")
    job_list.add_argument("--limit", type=int, default=20)
    job_list.add_argument("--json", action="store_true")
    job_list.set_defaults(run=cmd_jobs)
    collect = sub.add_parser("gc", help="expire cached packs and delete files nothing names")
    collect.add_argument("--repo", help="owner/name (default: every repo, plus orphans and old jobs)")
    collect.add_argument("--dry-run", action="store_true")
    collect.set_defaults(run=cmd_gc)
    client_cli.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except MuseError as exc:
        print(f"mpackhub: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
