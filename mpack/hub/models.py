"""Peewee models: the hub's tables.

All models bind to ``database``, a ``DatabaseProxy`` that ``mpack.db.open_database``
initialises. Times are UTC epoch seconds (8-byte floats, ``DoubleField``: a
4-byte ``real`` would round today's epoch to 128 s): cheap to compare and index,
with no time-zone spelling to get wrong. Commits, snapshots and objects are
keyed by the 64-hex digest so that lookups are spelling-independent, while the
record a client sent (with its id spelling) is kept verbatim in ``record``.
"""
from __future__ import annotations

import json

import peewee as pw

from mpack.format.layout import VERSION as FORMAT_VERSION
from mpack.hub.jsonlike import JsonText

database = pw.DatabaseProxy()


class JSONField(pw.TextField):
    """A JSON document stored as compact text."""

    def db_value(self, value):
        if isinstance(value, JsonText):  # serialised once, when it was checked (jsonlike.json_text)
            return str(value)
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class SchemaVersion(BaseModel):
    version = pw.IntegerField()
    applied_at = pw.DoubleField()


class User(BaseModel):
    username = pw.CharField(max_length=64, unique=True)
    created_at = pw.DoubleField()


class ApiToken(BaseModel):
    token_hash = pw.CharField(max_length=64, primary_key=True)  # sha256 hex of the token
    user = pw.ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    label = pw.CharField(max_length=100, default="")
    created_at = pw.DoubleField()


class Repo(BaseModel):
    repo_id = pw.CharField(max_length=64, primary_key=True)
    owner = pw.CharField(max_length=64)
    name = pw.CharField(max_length=100)
    visibility = pw.CharField(max_length=16)
    domain = pw.CharField(max_length=32, default="code")
    default_branch = pw.CharField(max_length=255, null=True)
    created_at = pw.DoubleField()

    class Meta:
        indexes = ((("owner", "name"), True),)

    @property
    def is_public(self) -> bool:
        return self.visibility == "public"


class Branch(BaseModel):
    repo = pw.ForeignKeyField(Repo, backref="branches", on_delete="CASCADE")
    name = pw.CharField(max_length=255)
    head_commit_id = pw.CharField(max_length=71)
    updated_at = pw.DoubleField()

    class Meta:
        indexes = ((("repo", "name"), True),)


class Commit(BaseModel):
    repo = pw.ForeignKeyField(Repo, on_delete="CASCADE")
    digest = pw.CharField(max_length=64)
    commit_id = pw.CharField(max_length=71)  # as the client spelled it
    parents = JSONField()  # parent digests
    snapshot = pw.CharField(max_length=64)  # snapshot digest
    generation = pw.IntegerField()  # 1 + max(parent generations): prunes walks
    record = JSONField()  # the CommitDict, verbatim

    class Meta:
        primary_key = pw.CompositeKey("repo", "digest")
        indexes = ((("repo", "generation"), False),)  # history.reachable scans by generation


class Snapshot(BaseModel):
    repo = pw.ForeignKeyField(Repo, on_delete="CASCADE")
    digest = pw.CharField(max_length=64)
    # The SnapshotDict, verbatim where its delta row has depth 0; JSON null where the record is
    # kept as its delta only (``mpack.hub.snapshots`` rebuilds it).
    record = JSONField()

    class Meta:
        primary_key = pw.CompositeKey("repo", "digest")


class SnapshotDelta(BaseModel):
    """A snapshot as its delta against a parent commit's snapshot, computed once at push.

    Builds write packs from these rows and never decode a whole manifest (a
    pack's snapshot records are deltas too). ``base`` is "" for a snapshot
    stored in full (``changed`` is then its whole manifest).
    """

    repo = pw.ForeignKeyField(Repo, on_delete="CASCADE")
    digest = pw.CharField(max_length=64)
    snapshot_id = pw.CharField(max_length=71)  # as the client spelled it
    base = pw.CharField(max_length=64, default="")  # base snapshot digest
    base_id = pw.CharField(max_length=71, default="")  # base snapshot id, as spelled
    fields = JSONField()  # the snapshot's keys but snapshot_id and manifest
    changed = JSONField()  # path -> object id, added or changed against the base
    removed = JSONField()  # path -> the object id it had in the base
    # Deltas from the nearest snapshot kept in full (0: this one is; ``mpack.hub.snapshots``).
    depth = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

    class Meta:
        table_name = "snapshot_delta"
        primary_key = pw.CompositeKey("repo", "digest")


class Object(BaseModel):
    """The repo's right to read a stored blob (bytes live in storage, shared)."""

    repo = pw.ForeignKeyField(Repo, on_delete="CASCADE")
    digest = pw.CharField(max_length=64)
    size = pw.BigIntegerField()
    # CRC-32 of the bytes, taken at push where their sha256 was checked: a build verifies the stored
    # file against it (3x faster than sha256 here). None for rows older than schema 7: sha256 then.
    crc32 = pw.BigIntegerField(null=True)

    class Meta:
        primary_key = pw.CompositeKey("repo", "digest")


class FetchMPackCache(BaseModel):
    """A built pack for (repo, tip) — or, with ``base``, for (repo, tip, haves)."""

    cache_id = pw.CharField(max_length=64, primary_key=True)
    repo = pw.ForeignKeyField(Repo, on_delete="CASCADE")
    tip_commit_id = pw.TextField()  # one id, or several joined by "," (multi-want packs)
    base = pw.TextField(default="")  # cache.base_key of the commits bounding the delta; "" = full pack
    mpack_id = pw.CharField(max_length=71, index=True)
    created_at = pw.DoubleField()
    expires_at = pw.DoubleField(index=True)
    last_used_at = pw.DoubleField()
    size = pw.BigIntegerField(default=0)
    commit_count = pw.IntegerField(default=0)
    blob_count = pw.IntegerField(default=0)
    hits = pw.IntegerField(default=0)
    # The mpack format of the pack; hits need the current one. Rows older than the column read 1 (migration 2).
    format_version = pw.IntegerField(default=FORMAT_VERSION)

    class Meta:
        table_name = "fetch_mpack_cache"
        indexes = ((("repo", "tip_commit_id"), False),)


class BackgroundJob(BaseModel):
    job_id = pw.CharField(max_length=64, primary_key=True)
    repo = pw.ForeignKeyField(Repo, null=True, on_delete="CASCADE")
    job_type = pw.CharField(max_length=64)
    payload = JSONField(default=dict)
    status = pw.CharField(max_length=16, default="pending")
    created_at = pw.DoubleField()
    run_after = pw.DoubleField()
    attempt = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField(default=5)
    locked_by = pw.CharField(max_length=128, null=True)
    locked_until = pw.DoubleField(null=True)
    last_error = pw.TextField(null=True)
    result = JSONField(null=True)
    finished_at = pw.DoubleField(null=True)

    class Meta:
        table_name = "background_job"
        indexes = ((("status", "run_after"), False),)


class GcRun(BaseModel):
    """One GC pass's report (dry runs too), newest kept for the admin page."""

    started_at = pw.DoubleField(index=True)
    scope = pw.CharField(max_length=200, default="")  # "owner/name", or "" for the whole hub
    dry_run = pw.BooleanField(default=False)
    report = JSONField()

    class Meta:
        table_name = "gc_run"


class HealthProbe(BaseModel):
    """Written and emptied by ``/healthz``'s write probe (migration 3); always empty otherwise."""

    at = pw.DoubleField()
    pad = pw.BlobField()

    class Meta:
        table_name = "health_probe"


ALL_MODELS = [SchemaVersion, User, ApiToken, Repo, Branch, Commit, Snapshot, Object, FetchMPackCache, BackgroundJob,
              SnapshotDelta]
