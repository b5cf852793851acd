"""The client commands of ``mpackhub``: clone, fetch, pull, push, verify.

Each command prints its result on stdout; every failure is one line on stderr
(``mpack.cli.main`` prints a ``MuseError``) and a non-zero exit. fetch, pull
and push work on the clone containing the current directory. The token comes
from ``--token`` or ``$MPACKHUB_TOKEN``; a token from the environment is not
sent over plain http to another machine (an explicit one is refused).
Downloads and applies show a progress bar when stderr is a terminal, unless
``--quiet``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from mpack.client import sync
from mpack.client.hub_client import ClientError, HubClient, token_allowed
from mpack.client.layout import MuseRepo, NotARepo
from mpack.client.progress import Bars
from mpack.format.reader import verify_mpack

TOKEN_ENV = "MPACKHUB_TOKEN"


def _reported(command):
    """File-system errors become one-line ``ClientError``s (``main`` prints those)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise ClientError(f"{exc.strerror or exc}{where}") from None

    return run


def _client(url: str, args: argparse.Namespace) -> HubClient:
    token = args.token
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
        if token is not None and not token_allowed(url):
            token = None  # never volunteer the environment's token to a plain-http host
    quiet = getattr(args, "quiet", False)
    return HubClient(url, token, on_busy=None if quiet else _tell_busy)


def _tell_busy(reason: str, pause: int) -> None:
    print(f"{reason} — trying again in {pause} s", file=sys.stderr)


def _short(commit_id: str | None) -> str:
    return commit_id[-64:][:12] if commit_id else "(none)"


def _bars(args: argparse.Namespace) -> Bars:
    return Bars(quiet=args.quiet)


@_reported
def cmd_clone(args: argparse.Namespace) -> int:
    cloned = sync.clone(args.url, Path(args.directory), _client(args.url, args), args.branch,
                        single_branch=args.single_branch, bars=_bars(args))
    if cloned.head is None:
        print(f"cloned an empty repository into {cloned.path} (branch {cloned.branch})")
        return 0
    others = [b for b in cloned.branches if b != cloned.branch]
    also = f"; branches also: {', '.join(others)}" if others else ""
    print(f"cloned {cloned.branch} at {_short(cloned.head)} ({cloned.commit_count} commits) into {cloned.path}{also}")
    return 0


@_reported
def cmd_fetch(args: argparse.Namespace) -> int:
    repo = MuseRepo.find(Path.cwd())
    fetched = sync.fetch(repo, _client(repo.origin_url(), args), _bars(args))
    for branch, (old, new) in fetched.changes.items():
        print(f"origin/{branch}: {_short(old)} -> {_short(new)}")
    for branch in fetched.new_branches:
        print(f"new branch {branch} (from origin/{branch})")
    if not fetched.changes:
        print("up to date")
    return 0


@_reported
def cmd_pull(args: argparse.Namespace) -> int:
    repo = MuseRepo.find(Path.cwd())
    branch, old, new = sync.pull(repo, _client(repo.origin_url(), args), _bars(args))
    print(f"{branch}: up to date" if old == new else f"{branch}: fast-forward {_short(old)} -> {_short(new)}")
    return 0


@_reported
def cmd_push(args: argparse.Namespace) -> int:
    repo = MuseRepo.find(Path.cwd())
    branch = args.branch or repo.current_branch()
    if branch is None:
        raise ClientError("HEAD does not name a branch; use --branch")
    sent = sync.push(repo, _client(repo.origin_url(), args), branch, args.force)
    print(f"{branch}: pushed {sent} commits" if sent else f"{branch}: everything up to date")
    return 0


@_reported
def cmd_verify(args: argparse.Namespace) -> int:
    with open(args.file, "rb") as src:
        # An incremental pack's first snapshot may be a delta against one the clone here holds.
        trailer = verify_mpack(src, snapshot_base=_local_snapshots())
    print(f"ok: {trailer.blob_count} blobs ({trailer.blob_bytes} bytes), {trailer.snapshot_count} snapshots, "
          f"{trailer.commit_count} commits; mpack id {trailer.mpack_hex}")
    return 0


def _local_snapshots():
    """The snapshots of the clone around the current directory, if any (a pack's delta base)."""
    try:
        return MuseRepo.find(Path.cwd()).snapshot_manifest
    except NotARepo:
        return None


def _token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", help=f"API token (default ${TOKEN_ENV})")


def _quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars (none anyway off a terminal)")


def add_commands(subparsers) -> None:
    """Add clone, fetch, pull, push and verify to the ``mpackhub`` sub-command parser."""
    clone = subparsers.add_parser("clone", help="clone every branch of a hub repository through prebuilt packs")
    clone.add_argument("url", help="http(s)://host[:port]/owner/repo")
    clone.add_argument("directory", help="a new or empty directory")
    clone.add_argument("--branch", "-b", help="the branch to check out (default: the remote's default branch)")
    clone.add_argument("--single-branch", action="store_true", help="bring only that branch")
    _token_option(clone)
    _quiet_option(clone)
    clone.set_defaults(run=cmd_clone)
    fetch = subparsers.add_parser("fetch", help="bring in the remote's new commits and branches (in a clone)")
    _token_option(fetch)
    _quiet_option(fetch)
    fetch.set_defaults(run=cmd_fetch)
    pull = subparsers.add_parser("pull", help="fetch, then fast-forward the current branch and its files")
    _token_option(pull)
    _quiet_option(pull)
    pull.set_defaults(run=cmd_pull)
    push = subparsers.add_parser("push", help="send a branch's new commits to the remote")
    push.add_argument("--branch", help="the branch to push (default: the current branch)")
    push.add_argument("--force", action="store_true", help="replace the remote head even if it is not an ancestor")
    _token_option(push)
    push.set_defaults(run=cmd_push)
    verify = subparsers.add_parser("verify", help="verify an mpack file and print its counts")
    verify.add_argument("file")
    verify.set_defaults(run=cmd_verify)
