"""The client's side of a pack: the Muse layout on disk, staging, atomic apply, safe checkout."""
from __future__ import annotations

import io
import os
import random
import tomllib
from pathlib import Path

import pytest

from mpack.client.apply import IncompletePack, apply_pack, stage_pack
from mpack.client.layout import LayoutError, MuseRepo, UnsafePath, record_json
from mpack.client.snapshot_json import SnapshotJson
from mpack.client.sync import ClientError, fast_forward, manifest_of
from mpack.format import ids
from mpack.format.errors import ChecksumMismatch, IdMismatch, InvalidRecord, MPackError, Truncated
from mpack.format.layout import SnapshotRecord
from mpack.format.order import canonical_order_commits
from mpack.format.reader import iter_mpack
from mpack.format.writer import MPackWriter
from tests.factories import History

EMPTY = ids.object_digest(b"")


def pack_bytes(history: History, commits: list[dict] | None = None, *, blobs: bool = True) -> bytes:
    """A pack of ``commits`` (default all), their snapshots and (optionally) their blobs."""
    commits = history.commits if commits is None else commits
    snapshots = {c["snapshot_id"]: history.snapshots[c["snapshot_id"]] for c in commits}
    wanted = sorted({o for s in snapshots.values() for o in s["manifest"].values() if ids.hex_of(o) != EMPTY})
    out = io.BytesIO()
    writer = MPackWriter(out)
    for object_id in wanted if blobs else []:
        content = history.blobs[object_id]
        writer.add_blob(object_id, content, len(content))
    for snapshot in snapshots.values():
        writer.add_snapshot(snapshot)
    for commit in canonical_order_commits(list(commits)):
        writer.add_commit(commit)
    writer.finish()
    return out.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the work tree and .muse), for before/after comparisons."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path) -> MuseRepo:
    return MuseRepo.init(tmp_path / "clone", repo_id="r1", domain="code")


def write_pack(tmp_path: Path, data: bytes, name: str = "p.mpack") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- layout ------------------------------------------------------------------------------

def test_init_writes_repo_json_and_refs_round_trip(repo):
    assert repo.meta()["repo_id"] == "r1" and repo.meta()["domain"] == "code"
    assert {"schema_version", "created_at"} <= set(repo.meta())
    head = "ab" * 32
    repo.set_head_branch("feature/x")
    repo.set_branch_head("feature/x", head)
    repo.set_remote_head("feature/x", head)
    assert (repo.muse / "HEAD").read_text() == "ref: refs/heads/feature/x\n"
    assert (repo.muse / "refs" / "heads" / "feature" / "x").read_text().strip() == head
    assert repo.current_branch() == "feature/x"
    assert repo.branches() == {"feature/x": head} and repo.remote_heads() == {"feature/x": head}


def test_refs_refuse_path_shaped_branch_names(repo):
    with pytest.raises(InvalidRecord):
        repo.set_branch_head("../../etc", "ab" * 32)


def test_config_toml_is_readable_by_tomllib(repo):
    url = 'http://127.0.0.1:8000/o/r?x="y"\\z'
    repo.write_config(url, "main")
    with open(repo.muse / "config.toml", "rb") as src:
        assert tomllib.load(src) == {"remotes": {"origin": {"url": url, "branch": "main"}}}
    assert repo.origin_url() == url


def test_objects_live_under_the_hex_digest_whatever_the_spelling(repo):
    content = b"hello\n"
    prefixed = "sha256:" + ids.object_digest(content)
    repo.write_object(prefixed, content)
    digest = ids.object_digest(content)
    assert (repo.muse / "objects" / digest[:2] / digest[2:]).read_bytes() == content
    assert repo.has_object(digest) and repo.read_object(prefixed) == content


def test_walk_is_breadth_first_from_the_tip_and_ancestry_follows_both_parents(repo, tmp_path):
    history = History().linear(3)
    side = history.commit({"side": b"s"}, parents=[history.commits[0]["commit_id"]])
    merge = history.commit({"m": b"m"}, parents=[history.commits[2]["commit_id"], side["commit_id"]])
    apply_pack(write_pack(tmp_path, pack_bytes(history)), repo)
    walked = [c["commit_id"] for c in repo.walk(merge["commit_id"])]
    assert walked[0] == merge["commit_id"]
    assert set(walked) == {c["commit_id"] for c in history.commits} and len(walked) == len(set(walked))
    assert repo.is_ancestor(side["commit_id"], merge["commit_id"])
    assert not repo.is_ancestor(merge["commit_id"], side["commit_id"])
    assert sorted(repo.all_commit_ids()) == sorted(c["commit_id"] for c in history.commits)


# -- staging and apply ---------------------------------------------------------------------

def test_a_whole_pack_applies_every_object_snapshot_and_commit(repo, tmp_path):
    history = History()
    for n in range(5):
        history.commit({f"d{n % 2}/f{n}.txt": f"v{n}\n".encode() * (n + 1), "README": f"r{n}".encode()})
    apply_pack(write_pack(tmp_path, pack_bytes(history)), repo)
    for commit in history.commits:
        assert repo.read_commit(commit["commit_id"]) == commit
    for snapshot_id, snapshot in history.snapshots.items():
        assert repo.read_snapshot(snapshot_id) == snapshot
    for object_id, content in history.blobs.items():
        assert repo.read_object(object_id) == content
    assert not any(repo.tmp_dir.iterdir())  # the stage is gone


def test_stage_pack_streams_blobs_to_files_and_applies_nothing(tmp_path):
    history = History()
    history.commit({"big.bin": os.urandom(3 << 20)})  # several chunks
    staged = stage_pack(io.BytesIO(pack_bytes(history)), tmp_path / "stage")
    assert staged.trailer is not None and staged.trailer.blob_count == 1
    (blob_file,) = map(Path, staged.blobs.values())
    (content,) = history.blobs.values()
    assert blob_file.is_relative_to(tmp_path / "stage") and blob_file.read_bytes() == content
    staged.discard()
    assert not (tmp_path / "stage").exists()


@pytest.mark.parametrize("damage, error", [
    (lambda data: data[:len(data) // 2], Truncated),
    (lambda data: data[:-1], Truncated),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), ChecksumMismatch),
    (lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:], MPackError),
])
def test_a_damaged_pack_applies_nothing_and_leaves_no_stage(repo, tmp_path, damage, error):
    history = History().linear(4)
    apply_pack(write_pack(tmp_path, pack_bytes(history, history.commits[:2])), repo)
    repo.set_branch_head("main", history.commits[1]["commit_id"])
    before = tree(repo.root)
    data = pack_bytes(history, history.commits[2:])
    with pytest.raises(error):
        apply_pack(write_pack(tmp_path, damage(data), "bad.mpack"), repo)
    assert tree(repo.root) == before


def test_a_blob_that_lies_about_its_id_is_refused_before_anything_moves(repo, tmp_path):
    history = History().linear(2)
    data = pack_bytes(history)
    content = history.blobs[sorted(history.blobs)[0]]
    forged = data.replace(content, content[:-1] + bytes([content[-1] ^ 1]), 1)
    before = tree(repo.root)
    with pytest.raises((IdMismatch, ChecksumMismatch)):
        apply_pack(write_pack(tmp_path, forged), repo)
    assert tree(repo.root) == before


def test_an_incremental_pack_needs_its_base_in_the_repository(repo, tmp_path):
    history = History().linear(4)
    delta = write_pack(tmp_path, pack_bytes(history, history.commits[2:]), "delta.mpack")
    before = tree(repo.root)
    with pytest.raises(IncompletePack) as refused:
        apply_pack(delta, repo)
    assert refused.value.what == "parent commits"
    assert refused.value.missing == [history.commits[1]["commit_id"]]
    assert tree(repo.root) == before
    with pytest.raises(IncompletePack) as refused:
        apply_pack(write_pack(tmp_path, pack_bytes(history, blobs=False), "bare.mpack"), repo)
    assert refused.value.what == "objects" and len(refused.value.missing) == len(history.blobs)
    assert tree(repo.root) == before
    apply_pack(write_pack(tmp_path, pack_bytes(history, history.commits[:2]), "base.mpack"), repo)
    apply_pack(delta, repo)
    assert repo.has_commit(history.tip)


def test_missing_parents_and_snapshots_are_refused(repo, tmp_path):
    history = History().linear(2)
    second = history.commits[1]
    # Every blob and both snapshots, but only the second commit.
    out = io.BytesIO()
    writer = MPackWriter(out)
    for object_id in sorted(history.blobs):
        writer.add_blob(object_id, history.blobs[object_id], len(history.blobs[object_id]))
    for snapshot in history.snapshots.values():
        writer.add_snapshot(snapshot)
    writer.add_commit(second)
    writer.finish()
    with pytest.raises(IncompletePack) as refused:
        apply_pack(write_pack(tmp_path, out.getvalue()), repo)
    assert refused.value.what == "parent commits" and refused.value.missing == [second["parent_commit_id"]]
    out = io.BytesIO()
    writer = MPackWriter(out)
    writer.add_commit(history.commits[0])
    writer.finish()
    with pytest.raises(IncompletePack) as refused:
        apply_pack(write_pack(tmp_path, out.getvalue()), repo)
    assert refused.value.what == "snapshots"
    assert repo.all_commit_ids() == []


def test_the_empty_blob_is_written_when_a_manifest_names_it(repo, tmp_path):
    history = History()
    history.commit({"empty.txt": b"", "full.txt": b"x"})
    assert EMPTY in history.blobs
    apply_pack(write_pack(tmp_path, pack_bytes(history)), repo)  # the pack carries no empty blob
    assert repo.read_object(EMPTY) == b""
    repo.checkout(manifest_of(repo, history.tip))
    assert (repo.root / "empty.txt").read_bytes() == b""


# -- checkout ------------------------------------------------------------------------------

@pytest.fixture
def filled(repo, tmp_path) -> MuseRepo:
    history = History()
    history.commit({"a/b.txt": b"b", "c.txt": b"c"})
    apply_pack(write_pack(tmp_path, pack_bytes(history)), repo)
    return repo


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/tmp/abs.txt", ".muse/HEAD", "a/./b",
                                  "a//b", "", "a\\..\\b"])
def test_checkout_refuses_paths_that_escape_and_writes_nothing(filled, path):
    manifest = {"ok.txt": ids.object_digest(b"c"), path: ids.object_digest(b"b")}
    before = tree(filled.root.parent)
    with pytest.raises(UnsafePath):
        filled.checkout(manifest)
    assert tree(filled.root.parent) == before


def test_checkout_refuses_to_write_through_a_symlink(filled, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (filled.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath):
        filled.checkout({"link/pwned.txt": ids.object_digest(b"b")})
    assert list(outside.iterdir()) == []


def test_checkout_writes_the_tree_and_moves_between_snapshots(filled):
    first = {"a/b.txt": ids.object_digest(b"b"), "c.txt": ids.object_digest(b"c")}
    filled.checkout(first)
    assert (filled.root / "a" / "b.txt").read_bytes() == b"b"
    filled.checkout({"c.txt": ids.object_digest(b"c")}, previous=first)
    assert not (filled.root / "a").exists() and (filled.root / "c.txt").read_bytes() == b"c"


def test_checkout_needs_every_object(filled):
    with pytest.raises(LayoutError):
        filled.checkout({"x.txt": ids.object_digest(b"not stored")})


def test_fast_forward_refuses_to_overwrite_local_changes(repo, tmp_path):
    history = History()
    one = history.commit({"song.txt": b"v1"})
    two = history.commit({"song.txt": b"v2"})
    apply_pack(write_pack(tmp_path, pack_bytes(history)), repo)
    repo.checkout(manifest_of(repo, one["commit_id"]))
    repo.set_head_branch("main")
    repo.set_branch_head("main", one["commit_id"])
    (repo.root / "song.txt").write_bytes(b"my edit")
    with pytest.raises(ClientError, match="local changes"):
        fast_forward(repo, "main", one["commit_id"], two["commit_id"])
    assert repo.branch_head("main") == one["commit_id"]
    (repo.root / "song.txt").write_bytes(b"v1")
    fast_forward(repo, "main", one["commit_id"], two["commit_id"])
    assert (repo.root / "song.txt").read_bytes() == b"v2" and repo.branch_head("main") == two["commit_id"]


# -- format v2 apply ---------------------------------------------------------------------

def test_a_pack_whose_sha256_is_not_the_expected_id_is_not_applied(repo, tmp_path):
    history = History().linear(2)
    before = tree(repo.root)
    with pytest.raises(IdMismatch) as refused:
        apply_pack(write_pack(tmp_path, pack_bytes(history)), repo, expected_id="sha256:" + "0" * 64)
    assert refused.value.kind == "mpack" and tree(repo.root) == before
    apply_pack(write_pack(tmp_path, data := pack_bytes(history)), repo, expected_id=ids.object_digest(data))
    assert repo.has_commit(history.tip)


def test_snapshot_files_rendered_from_deltas_are_the_json_of_whole_snapshots():
    rng = random.Random(5)
    blobs = [ids.object_digest(bytes([n])) for n in range(20)]
    paths = ["a", "b/c", "\u00e9/\u00fc", "z", "a b", "A", "\u97f3", "b", "b/c/d", "x\u2014y", 'q"uote', "emoji \U0001f3b5"]
    history, manifest = History(), {}
    for _n in range(60):
        for _ in range(rng.randint(0, 4)):
            path = rng.choice(paths)
            if rng.random() < 0.3:
                manifest.pop(path, None)
            else:
                manifest[path] = rng.choice(blobs)
        history.commit({}, files=dict(manifest))
    renderer, rendered = SnapshotJson(), 0
    for record in iter_mpack(io.BytesIO(pack_bytes(history, blobs=False))):
        if isinstance(record, SnapshotRecord):
            assert renderer.render(record) == record_json("snapshots", record.data)
            rendered += 1
    assert rendered == len(history.snapshots)


def test_a_fresh_checkout_creates_the_same_files_in_place(filled, tmp_path):
    manifest = {"a/b.txt": ids.object_digest(b"b"), "c.txt": ids.object_digest(b"c"), "d/e/f.txt": ids.object_digest(b"b")}
    filled.checkout(manifest, fresh=True)
    assert {p: (filled.root / p).read_bytes() for p in manifest} == {"a/b.txt": b"b", "c.txt": b"c", "d/e/f.txt": b"b"}
    assert not [p for p in filled.root.rglob(".tmp-*")]
    with pytest.raises(FileExistsError):  # exclusive: a fresh checkout never replaces what is there
        filled.checkout({"c.txt": ids.object_digest(b"b")}, fresh=True)
