"""One set of record rules (mpack/format/rules.py) for push and the pack reader (issue 9, item 5).

A push refuses with 422, naming the field, every record the reader would refuse
inside a pack, so nothing a push accepts can break a later clone.
"""
from __future__ import annotations

import io

import pytest

from mpack.format import ids, rules
from mpack.format.errors import InvalidRecord, MalformedRecord
from mpack.format.reader import verify_mpack
from mpack.format.writer import MPackWriter
from mpack.hub import fetch
from mpack.hub.models import Branch, Commit
from storage import MPACKS
from tests.factories import History, error_of, push_history, wire

SONG = "/gabriel/song"
BAD_PATHS = ["../x", "a/../b", "/abs", ".muse/HEAD", ".muse", ".MUSE/config", "a//b", "a/", "./a", "a\0b",
             "a\\b", "tab\tname", "bell\x07", "del\x7f", "c1\x85", "rlo\u202egnp.exe", "iso\u2066x"]
BAD_BRANCHES = ["HEAD", "refs/heads/x", "refs/tags/v1", "with space", "rlo\u202eniam", "lrm\u200e", "ctl\x01",
                "../x", "-x", "/x", "a\\b", "a\0b", "", ".", "x/", "a//b", "x.lock", "x" * 256]
GOOD_PATHS = ["a.txt", "dir/sub/file.mid", "ünïcode/файл.txt", ".museum/x", "x..y", "a.muse/b", "..x"]
GOOD_BRANCHES = ["main", "feature/drums", "release-1.0", "ünïcode", "a_b", "HEADS", "refsx/y"]


@pytest.fixture
def token(owner):
    return owner[1]


def one_commit(manifest: dict[str, bytes] | None = None, **snapshot_extra) -> History:
    h = History()
    h.commit(manifest if manifest is not None else {"a.txt": b"a"})
    h.snapshots[h.commits[0]["snapshot_id"]].update(snapshot_extra)
    return h


def push_body(h: History, branch: str = "main") -> dict:
    return {"bundle": h.bundle(), "branch": branch, "force": False}


def nothing_stored(repo) -> bool:
    return Commit.select().where(Commit.repo == repo).count() == 0 and \
        Branch.select().where(Branch.repo == repo).count() == 0


# -- push: 422 naming the field -------------------------------------------------------

def test_a_snapshot_whose_created_at_is_an_int_is_422_and_clones_keep_working(app, hub, repo, token):
    h = one_commit(created_at=999)
    error = error_of(wire(app, "POST", f"{SONG}/push", push_body(h), token=token), 422)
    assert error["error"] == "invalid_record"
    assert error["detail"].startswith("bundle.snapshots[0].created_at:")
    assert nothing_stored(repo)


@pytest.mark.parametrize("path", BAD_PATHS)
def test_a_manifest_path_that_escapes_the_work_tree_is_422(app, hub, repo, token, path):
    h = one_commit({path: b"x"})
    error = error_of(wire(app, "POST", f"{SONG}/push", push_body(h), token=token), 422)
    assert error["error"] == "invalid_record"
    assert error["detail"].startswith("bundle.snapshots[0].manifest[")
    assert nothing_stored(repo)


@pytest.mark.parametrize("branch", BAD_BRANCHES)
def test_a_branch_name_the_cli_refuses_is_422(app, hub, repo, token, branch):
    error = error_of(wire(app, "POST", f"{SONG}/push", push_body(one_commit(), branch), token=token), 422)
    assert error["error"] == "invalid_record" and error["detail"].startswith("branch:")
    assert nothing_stored(repo)


@pytest.mark.parametrize("branch, path", list(zip(GOOD_BRANCHES, GOOD_PATHS, strict=True)))
def test_what_a_push_accepts_packs_and_reads_back(app, hub, repo, token, branch, path):
    h = one_commit({path: b"content"})
    push_history(app, token, SONG, h, branch=branch)
    answer = fetch.wire_fetch_mpack(hub, repo, want=[branch], have=[])
    with hub.store.open(MPACKS, answer["mpack_id"]) as pack:
        assert verify_mpack(pack).commit_count == 1


# -- the reader refuses the same records ----------------------------------------------

def pack_of(snapshot: dict, commit: dict | None = None) -> io.BytesIO:
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_snapshot(snapshot)
    if commit is not None:
        writer.add_commit(commit)
    writer.finish()
    out.seek(0)
    return out


@pytest.mark.parametrize("path", BAD_PATHS)
def test_the_reader_refuses_a_pack_whose_manifest_path_push_refuses(path):
    manifest = {path: ids.object_digest(b"x")}
    snapshot = {"snapshot_id": ids.snapshot_digest(manifest), "manifest": manifest, "created_at": ""}
    with pytest.raises(MalformedRecord, match="manifest"):
        verify_mpack(pack_of(snapshot))


def test_the_reader_and_push_share_the_created_at_rule():
    manifest = {"a.txt": ids.object_digest(b"x")}
    snapshot = {"snapshot_id": ids.snapshot_digest(manifest), "manifest": manifest, "created_at": 999}
    with pytest.raises(MalformedRecord, match="created_at"):
        verify_mpack(pack_of(snapshot))
    with pytest.raises(InvalidRecord) as refused:
        rules.check_snapshot_record(snapshot, "bundle.snapshots[0]")
    assert refused.value.field == "bundle.snapshots[0].created_at"


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_safe_paths_pass_both(path):
    assert rules.path_problem(path) is None


@pytest.mark.parametrize("branch", GOOD_BRANCHES)
def test_safe_branch_names_pass(branch):
    assert rules.check_branch_name(branch) == branch


def test_lone_surrogates_are_refused_in_paths_and_branch_names():
    assert rules.path_problem("lone\ud800") is not None
    assert rules.branch_problem("lone\udfff") is not None


GOOD_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize("bad_key, bad_value, problem", [
    ("../up", GOOD_ID, "path has an empty"), ("", GOOD_ID, "path must be a non-empty"), (b"bytes", GOOD_ID, "path must be"),
    ("fine.txt", "sha256:" + "AB" * 32, "not a well-formed id"), ("fine.txt", 7, "not a well-formed id"),
    ("fine.txt", "ab" * 31, "not a well-formed id"), ("fine.txt", ["x"], "not a well-formed id"),
])
def test_a_manifest_of_many_good_entries_and_one_bad_is_refused_naming_it(bad_key, bad_value, problem):
    manifest = {f"dir/file{n}.txt": ("ab" * 32 if n % 2 else GOOD_ID) for n in range(300)}
    assert rules.check_manifest(manifest) is manifest  # the fast path (issue 8) accepts the good ones
    manifest[bad_key] = bad_value
    with pytest.raises(InvalidRecord, match=problem) as info:
        rules.check_manifest(manifest)
    assert repr(bad_key)[:20] in str(info.value.detail) + str(getattr(info.value, "field", ""))


@pytest.mark.parametrize("bad_key, bad_value, problem", [
    ("../up", GOOD_ID, "path has an empty"), (b"bytes", GOOD_ID, "path must be"),
    ("fine.txt", 7, "not a well-formed id"), ("fine.txt", ["x"], "not a well-formed id"),
    ("dir/file1.txt", "ab" * 31, "not a well-formed id"),  # a path the checked manifest has, with a bad id
])
def test_a_bad_entry_is_refused_when_the_rest_of_its_manifest_was_checked_before(bad_key, bad_value, problem):
    checked = {f"dir/file{n}.txt": GOOD_ID for n in range(300)}
    manifest = {**checked, "new.txt": GOOD_ID}
    assert rules.check_manifest(manifest, checked=checked) is manifest
    manifest[bad_key] = bad_value
    with pytest.raises(InvalidRecord, match=problem):
        rules.check_manifest(manifest, checked=checked)


def test_a_push_whose_older_snapshot_has_a_bad_path_its_tip_lacks_is_422_naming_that_snapshot(app, hub, repo, token):
    h = History()
    h.commit({**{f"f{n}.txt": b"%d" % n for n in range(50)}, "../escape": b"x"})
    h.commit({"../escape": None})
    error = error_of(wire(app, "POST", f"{SONG}/push", push_body(h), token=token), 422)
    # Tip first: snapshots[1] is checked against snapshots[0], which lacks the bad path.
    assert error["detail"].startswith("bundle.snapshots[1].manifest['../escape']")
    assert nothing_stored(repo)
