"""Clone, fetch, pull and push between a hub and a clone in the Muse layout.

The operations behind ``mpackhub clone|fetch|pull|push`` (``mpack.client.commands``
parses arguments and prints). As the Muse CLI's clone, a clone has a local
branch for every remote branch (``refs/heads/*`` and ``remotes/origin/*``) with
the default branch checked out; fetch and pull add a local branch for each new
remote branch. Guarantees:

    * clone builds the whole repository in a hidden sibling temp directory and
      renames it to its target at the end; any failure deletes the temp
      directory, so the target is either complete or absent.
    * clone makes the history durable (one pass, ``files.make_durable``) while
      it writes the work tree, and writes the refs after both.
    * clone asks for one pack per branch: the checked-out branch's whole
      history (the pack every push prebuilds: a cache hit), then each other
      branch as a delta over the heads already there (docs/decisions.md).
    * fetch applies every pack (verified, all or nothing each) before it moves
      any remote-tracking ref, and moves them only after every branch arrived;
      a new remote branch becomes a local branch only then, and never replaces
      a local branch or the checked-out one.
    * pull fast-forwards only, refuses to overwrite local changes, and moves
      the branch ref after the work tree.
    * A pack is applied as it downloads (never written whole to disk first);
      a connection that breaks off is reopened and resumes where the reader
      stopped (``Range``). A fetch that gives up applies nothing and keeps
      nothing: the next one starts over (docs/decisions.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mpack.client.apply import apply_stream
from mpack.client.files import dir_mode, make_durable
from mpack.client.hub_client import ClientError, HubClient
from mpack.client.layout import MuseRepo
from mpack.client.progress import QUIET, Bars
from mpack.format import ids, rules


@dataclass
class Cloned:
    path: Path
    branch: str
    head: str | None
    commit_count: int
    branches: list[str]


@dataclass
class Fetched:
    changes: dict[str, tuple[str | None, str]]  # remote branch → (old tracking head, new)
    new_branches: list[str]  # local branches created for new remote branches


def fetch_pack(client: HubClient, repo: MuseRepo, want: list[str], have: list[str], label: str,
               bars: Bars = QUIET, pending: list[Path] | None = None) -> dict:
    """Ask the hub for a pack of ``want`` minus ``have`` and apply it to ``repo`` as it downloads.

    The pack is never written whole to disk: the verifying reader consumes the
    download (``PackStream``, which resumes a broken connection with ``Range``)
    and stages its objects and records; they move into ``repo`` only once the
    pack's id has checked out (docs/decisions.md). ``pending``: see ``StagedPack.commit_into``.
    """
    answer = client.fetch_mpack(want, have)
    bar = bars(f"{label}: download and apply")
    try:
        with client.open_pack(answer["mpack_url"]) as stream:
            apply_stream(stream.open(), repo, bar, total=stream.total, expected_id=answer["mpack_id"],
                         pending=pending)
    finally:
        if bar:
            bar.close()
    return answer


def _require_commit(repo: MuseRepo, commit_id: str) -> None:
    if not repo.has_commit(commit_id):
        raise ClientError(f"the pack from the hub does not contain the requested commit {commit_id}")


def manifest_of(repo: MuseRepo, commit_id: str | None) -> dict[str, str]:
    """The manifest of a commit's snapshot ({} for no commit)."""
    if commit_id is None:
        return {}
    return dict(repo.read_snapshot(repo.read_commit(commit_id)["snapshot_id"])["manifest"])


def remote_heads(refs: dict) -> dict[str, str]:
    """The ``branch_heads`` of a refs answer, every name and id validated before it becomes a path."""
    return {rules.check_branch_name(branch): ids.check_id(head, "branch head") for branch, head in refs["branch_heads"].items()}


# -- clone ------------------------------------------------------------------------------

def check_clone_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ClientError(f"{target} already exists and is not an empty directory")
    if not target.absolute().parent.is_dir():
        raise ClientError(f"{target.absolute().parent} does not exist")


def _pick_branch(refs: dict, heads: dict[str, str], requested: str | None) -> str:
    if requested is not None:
        if requested not in heads:
            raise ClientError(f"the remote has no branch {requested!r} (it has: {', '.join(sorted(heads)) or 'none'})")
        return requested
    default = refs.get("default_branch") or "main"
    if default in heads or not heads:
        return rules.check_branch_name(default)
    return sorted(heads)[0]


def clone(url: str, target: Path, client: HubClient, branch: str | None = None, *,
          single_branch: bool = False, bars: Bars = QUIET) -> Cloned:
    """Clone ``url`` into ``target``: every branch (or only ``branch`` with ``single_branch``).

    ``branch`` (default: the remote's default branch) is checked out.
    """
    check_clone_target(target)
    refs = client.refs()
    heads = remote_heads(refs)
    branch = _pick_branch(refs, heads, branch)
    if single_branch:
        heads = {b: h for b, h in heads.items() if b == branch}
    temp = Path(tempfile.mkdtemp(prefix=f".{target.absolute().name}.clone-", dir=target.absolute().parent))
    try:
        repo = MuseRepo.init(temp, repo_id=str(refs.get("repo_id") or ""), domain=str(refs.get("domain") or "midi"))
        pending: list[Path] = []
        count = fetch_branches(client, repo, heads, branch, bars, pending)
        # The history is made durable while the work tree is written; the refs wait for both.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpack-durable") as pool:
            durable = pool.submit(make_durable, pending)
            if branch in heads:  # else an empty remote: a clone with no commits, ready to push
                repo.checkout(manifest_of(repo, heads[branch]), fresh=True)  # in the temp dir: created in place
            durable.result()
        for name, head in heads.items():
            repo.set_branch_head(name, head)
            repo.set_remote_head(name, head)
        repo.write_config(url, branch)
        repo.set_head_branch(branch)
        shutil.rmtree(repo.muse / "tmp", ignore_errors=True)
        os.chmod(temp, dir_mode())  # mkdtemp made it private; a clone is as open as the umask says
        os.rename(temp, target)  # replaces an empty target directory atomically
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Cloned(target, branch, heads.get(branch), count, sorted(heads))


def fetch_branches(client: HubClient, repo: MuseRepo, heads: dict[str, str], first: str, bars: Bars = QUIET,
                   pending: list[Path] | None = None) -> int:
    """Bring in the history of every head: ``first``'s whole pack, then each other branch as a delta.

    The first pack is the one every push prebuilds (a cache hit); the others
    name the heads already fetched as haves, in a fixed order, so a second
    clone of the same tips hits the packs the first one had built. Returns
    the number of commits received. ``pending``: see ``StagedPack.commit_into``.
    """
    order = sorted(heads, key=lambda name: (name != first, name))
    present: list[str] = []
    count = 0
    for name in order:
        head = heads[name]
        if not repo.has_commit(head):
            answer = fetch_pack(client, repo, [head], present, f"clone {name}", bars, pending)
            _require_commit(repo, head)
            count += int(answer.get("commit_count") or 0)
        present.append(head)
    return count


# -- fetch and pull ---------------------------------------------------------------------

def _haves(repo: MuseRepo, tracking: str | None) -> list[str]:
    if tracking is not None and repo.has_commit(tracking):
        return [tracking]
    return sorted({h for h in repo.branches().values() if h and repo.has_commit(h)})


def fetch(repo: MuseRepo, client: HubClient, bars: Bars = QUIET) -> Fetched:
    """Bring every remote branch's history in, move ``remotes/origin/*``, add local branches for new ones."""
    heads = remote_heads(client.refs())
    changes = {}
    for branch, head in sorted(heads.items()):
        tracking = repo.remote_head(branch)
        if not repo.has_commit(head):
            fetch_pack(client, repo, [head], _haves(repo, tracking), f"fetch {branch}", bars)
            _require_commit(repo, head)
        if tracking != head:
            changes[branch] = (tracking, head)
    for branch, (_, head) in changes.items():  # refs last, once every branch has arrived
        repo.set_remote_head(branch, head)
    return Fetched(changes, add_local_branches(repo, {b: new for b, (old, new) in changes.items() if old is None}))


def add_local_branches(repo: MuseRepo, new_heads: dict[str, str]) -> list[str]:
    """A local branch at the head of each remote branch seen for the first time, unless one exists.

    Only new remote branches: a local branch deleted on purpose does not come
    back at the next fetch. The checked-out branch is left to pull: a ref
    moved without its work tree would show every file as changed.
    """
    current, local = repo.current_branch(), repo.branches()
    created = sorted(b for b in new_heads if b not in local and b != current)
    for branch in created:
        repo.set_branch_head(branch, new_heads[branch])
    return created


def pull(repo: MuseRepo, client: HubClient, bars: Bars = QUIET) -> tuple[str, str | None, str]:
    """Fetch, then fast-forward the current branch and its work tree: (branch, old head, new head)."""
    fetch(repo, client, bars)
    branch = repo.current_branch()
    if branch is None:
        raise ClientError("HEAD does not name a branch; check out a branch first")
    remote = repo.remote_head(branch)
    if remote is None:
        raise ClientError(f"the remote has no branch {branch!r}")
    local = repo.branch_head(branch)
    if local is not None and repo.is_ancestor(remote, local):
        return branch, local, local  # up to date, or ahead
    if local is not None and not repo.is_ancestor(local, remote):
        raise ClientError(f"diverged: merge with the Muse CLI ({branch} {local[:12]} vs origin/{branch} {remote[:12]})")
    fast_forward(repo, branch, local, remote)
    return branch, local, remote


def fast_forward(repo: MuseRepo, branch: str, local: str | None, remote: str) -> None:
    """Move the work tree from ``local``'s snapshot to ``remote``'s, then the branch ref."""
    old, new = manifest_of(repo, local), manifest_of(repo, remote)
    changed = repo.modified_paths(old, new)
    if changed:
        shown = ", ".join(changed[:5]) + (" …" if len(changed) > 5 else "")
        raise ClientError(f"local changes would be overwritten ({len(changed)} files: {shown}); commit or remove them first")
    repo.checkout(new, old)
    repo.set_branch_head(branch, remote)


# -- push ---------------------------------------------------------------------------------

def outgoing(repo: MuseRepo, local: str, remote_heads_: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Commits reachable from ``local`` and from no remote head (tip first, breadth-first) and their snapshots."""
    known: set[str] = set()
    for head in remote_heads_.values():
        known |= repo.ancestors(head)
    commits = list(repo.walk(local, stop=known))
    snapshots: dict[str, dict] = {}
    for commit in commits:
        digest = ids.hex_of(commit["snapshot_id"])
        if digest not in snapshots:
            snapshots[digest] = repo.read_snapshot(commit["snapshot_id"])
    return commits, list(snapshots.values())


def push(repo: MuseRepo, client: HubClient, branch: str, force: bool = False) -> int:
    """Push ``branch``; the number of commits sent (0 when the remote has them all)."""
    local = repo.branch_head(branch)
    if local is None:
        raise ClientError(f"no local branch {branch!r}")
    heads = remote_heads(client.refs())
    commits, snapshots = outgoing(repo, local, heads)
    if not commits:  # every commit is on the remote already
        return 0
    try:
        client.push(commits, snapshots, repo.read_object, branch, force)
    except ClientError as exc:
        if exc.status == 409:
            raise ClientError("rejected: non-fast-forward (fetch and pull first, or push --force)", 409) from None
        raise
    repo.set_remote_head(branch, local)
    return len(commits)
