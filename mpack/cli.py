"""The ``mpackhub`` command: run and administer a hub, and clone/fetch/pull/push as a client.

``serve`` runs the hub named by the environment (README), creating its home on
first start. The other server-side commands (admin, jobs, gc, fsck) act either on
the hub at ``--home`` (default ``$MPACKHUB_HOME``, else ``./var``), which must
already exist — they never create one — or, with ``--url``, on a running hub
through its admin routes and the admin token. Client commands talk HTTP to a
hub. Errors print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mpack.client import commands as client_cli
from mpack.client.admin_client import TOKEN_ENV as ADMIN_TOKEN_ENV
from mpack.client.admin_client import AdminClient
from mpack.format.errors import MuseError

if TYPE_CHECKING:
    from mpack.hub.services import Hub
    from mpack.hub.settings import Settings

# The server side (mpack.hub, mpack.http: falcon, peewee, boto3…) is imported by the commands that use
# it, not here: a client command (clone, fetch, pull, push) would pay ~0.25 s of imports at every start.


def configure_logging(level: str) -> None:
    """``mpack.http.logs.configure_logging``, imported when a server-side command needs it."""
    from mpack.http.logs import configure_logging as configure

    configure(level)


class UsageError(MuseError):
    code = "usage"


def cmd_serve(args: argparse.Namespace) -> int:
    from mpack.http.serving import HubServer, exec_server
    from mpack.hub.bootstrap import build_hub
    from mpack.hub.settings import Settings, secrets_path

    if args.bind:
        os.environ["MPACKHUB_BIND"] = args.bind  # the workers read the environment too
    settings = Settings.from_env(os.environ)
    build_hub(settings).db.close()  # create the home, database and secrets before the workers start
    server = HubServer()
    # The banner goes to stdout: every line on stderr is a JSON log line (mpack/http/logs.py).
    print(f"mpackhub {settings.public_url} (listening on {server.values['bind']})")
    print(f"  home: {settings.home}")
    if not os.environ.get("MPACKHUB_ADMIN_TOKEN"):
        print(f"  admin token: in {secrets_path(settings.home)} (key admin_token)")
    print(second_terminal(executable(), settings), flush=True)
    exec_server()  # a fresh interpreter, so that metrics start in multiprocess mode
    return 0


def executable() -> str:
    """How this very ``mpackhub`` is started again from any directory (absolute, shell-quoted)."""
    script = Path(sys.argv[0])
    if script.name == "mpackhub" and script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m mpack.cli"


def second_terminal(program: str, settings: Settings) -> str:
    """The commands ``mpackhub serve`` prints for the operator's second terminal."""
    home = shlex.quote(str(settings.home))
    return "\n".join([
        "In a second terminal (from any directory):",
        f"  {program} admin create-user NAME --home {home}    # prints the user's API token once",
        f"  {program} jobs --home {home}",
        f"  {program} gc --dry-run --home {home}",
        "or over HTTP, from anywhere (the admin token instead of the home):",
        f"  MPACKHUB_ADMIN_TOKEN=... {program} jobs --url {shlex.quote(settings.public_url)}",
    ])


class LocalAdmin:
    """The admin operations on a hub opened from its home (``--home``); ``AdminClient`` is the HTTP twin."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def create_user(self, name: str) -> str:
        from mpack.hub import auth

        return auth.create_user(self.hub, name)[1]

    def jobs(self, limit: int) -> dict:
        from mpack.hub import job_reports

        return job_reports.overview(self.hub, limit=limit)

    def gc(self, repo: str | None, dry_run: bool) -> dict:
        from mpack.hub import gc

        found, dry_run = gc.parse_request({"repo": repo, "dry_run": dry_run} if repo else {"dry_run": dry_run})
        return gc.run_gc(self.hub, repo=found, dry_run=dry_run).as_dict()

    def fsck(self, dry_run: bool) -> dict:
        from mpack.hub import fsck

        return fsck.run_fsck(self.hub, dry_run=dry_run).as_dict()


def admin_target(args: argparse.Namespace, *, counted: bool = False) -> LocalAdmin | AdminClient:
    """The hub a server-side command acts on: ``--url`` over HTTP, else the existing hub at ``--home``.

    Never creates a hub: a home without one is refused (``NoHub``) before anything is written.
    """
    url, home = getattr(args, "url", None), getattr(args, "home", None)
    if url is not None and home is not None:
        raise UsageError("--home and --url name two hubs: give one")
    if url is not None:
        return AdminClient(url, getattr(args, "admin_token", None) or os.environ.get(ADMIN_TOKEN_ENV))
    environ = dict(os.environ)
    if home is not None:
        environ["MPACKHUB_HOME"] = home
    if counted:  # a command whose work the server's metrics count (gc): counted the same from a shell
        count_with_the_server(environ)
    from mpack.hub.bootstrap import build_hub, existing_settings  # after: it imports prometheus_client

    settings = existing_settings(environ)
    configure_logging(settings.log_level)
    return LocalAdmin(build_hub(settings))


def count_with_the_server(environ: dict[str, str]) -> None:
    """Let a command run from a shell (``gc``) count into the metric files the server's workers
    share, so that the next scrape includes it: where that directory exists, point prometheus_client at it.

    The library picks its multiprocess mode at its first import, which in this process is still to come
    (the hub's modules are imported after this); a counter file stays counted after its process exits.

    All such commands share one set of files (``counter_shell.db`` …) instead of one per run, which
    a scrape would read one by one (an hourly cron would add 24 a day until the server restarts):
    the first to take ``shell.lock`` in the directory writes them, its counts added to those before
    it; one run while another holds the lock keeps files of its own (two processes must never write
    one file). The lock is released when the process exits.
    """
    from mpack.hub.settings import METRICS_DIR_VAR, metrics_dir_from_env

    if "prometheus_client" in sys.modules:
        return
    path = metrics_dir_from_env(environ)
    if not path.is_dir():
        return
    environ[METRICS_DIR_VAR] = os.environ[METRICS_DIR_VAR] = str(path)
    if _hold_shell_lock(path):
        from prometheus_client import values  # multiprocess mode: the directory is set

        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: SHELL_METRICS_ID)


SHELL_METRICS_ID = "shell"
_held_locks: list[int] = []  # open for the life of the process: closing one releases its lock


def _hold_shell_lock(metrics_dir: Path) -> bool:
    """Take ``shell.lock`` in ``metrics_dir`` for the rest of this process → False if another process holds it."""
    try:
        fd = os.open(metrics_dir / "shell.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held_locks.append(fd)
    return True


def add_hub_options(parser: argparse.ArgumentParser) -> None:
    """``--home`` / ``--url`` / ``--admin-token``, shared by every server-side command (admin, jobs, gc, fsck)."""
    where = parser.add_argument_group("which hub")
    where.add_argument("--home", default=argparse.SUPPRESS,
                       help="the hub's directory (default $MPACKHUB_HOME, else ./var); refused if no hub is there")
    where.add_argument("--url", default=argparse.SUPPRESS,
                       help="act on the running hub at URL over HTTP instead (needs the admin token)")
    where.add_argument("--admin-token", default=argparse.SUPPRESS, help=f"with --url (default ${ADMIN_TOKEN_ENV})")


def cmd_create_user(args: argparse.Namespace) -> int:
    print(admin_target(args).create_user(args.name))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    overview = admin_target(args).jobs(args.limit)
    if args.json:
        print(json.dumps(overview, indent=2))
        return 0
    print("  ".join(f"{status}: {count}" for status, count in sorted(overview["counts"].items())) or "no jobs")
    for job in overview["recent"]:
        error = job.get("last_error") or ""
        print(f"{job['job_id'][:12]}  {job['status']:8}  {job['job_type']:24}  attempt {job['attempt']}  {error}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    print(json.dumps(admin_target(args, counted=True).gc(args.repo, args.dry_run)))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    report = admin_target(args).fsck(args.dry_run)
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0 if report.get("clean") else 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mpackhub", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub under gunicorn (settings from MPACKHUB_* variables)")
    serve.add_argument("--bind", help="host:port (default MPACKHUB_BIND or 127.0.0.1:8000)")
    serve.set_defaults(run=cmd_serve)
    admin_parser = sub.add_parser("admin", help="administer users")
    add_hub_options(admin_parser)
    admin = admin_parser.add_subparsers(dest="admin_command", required=True)
    create = admin.add_parser("create-user", help="create a user and print its API token (shown once)")
    create.add_argument("name")
    add_hub_options(create)
    create.set_defaults(run=cmd_create_user)
    job_list = sub.add_parser("jobs", help="job counts by status and the recent jobs")
    job_list.add_argument("--limit", type=int, default=20)
    job_list.add_argument("--json", action="store_true")
    add_hub_options(job_list)
    job_list.set_defaults(run=cmd_jobs)
    collect = sub.add_parser("gc", help="expire cached packs and delete files nothing names")
    collect.add_argument("--repo", help="owner/name (default: every repo, plus orphans and old jobs)")
    collect.add_argument("--dry-run", action="store_true")
    add_hub_options(collect)
    collect.set_defaults(run=cmd_gc)
    check = sub.add_parser("fsck", help="verify every stored blob and pack; quarantine damaged ones (exit 2 if any)")
    check.add_argument("--dry-run", action="store_true", help="report only: move, drop and forget nothing")
    check.add_argument("--pretty", action="store_true", help="indent the JSON report")
    add_hub_options(check)
    check.set_defaults(run=cmd_fsck)
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
