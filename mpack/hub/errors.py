"""Domain errors: a small hierarchy that carries data, mapped to HTTP once.

Every failure a caller can cause is one of these. ``mpack.http.errors`` maps
the families below to status codes; nothing else decides a status, and
nothing recognises an error by its message.
"""
from __future__ import annotations

# The errors the hub raises that live below it (ids and packs in the format
# package, storage failures in ``storage``) are re-exported, so the hub and its
# HTTP mapping name every error through this one module.
from mpack.format.errors import InvalidId, InvalidRecord, MPackError, MuseError
from storage.errors import (
    ContentMismatch,
    InvalidUrlToken,
    StorageError,
    StorageFull,
    StorageUnavailable,
    StoredObjectMissing,
)

__all__ = [
    "AlreadyExists", "BadRequest", "BodyTimeout", "BodyTooComplex", "Conflict", "BodyTooLarge", "BundleTooLarge", "CacheFull",
    "ClientShareTaken", "ContentMismatch", "Forbidden", "InvalidField", "InvalidId", "InvalidRecord", "InvalidUrlToken",
    "MalformedBody", "MissingReference", "MPackError", "MPackMissing", "MuseError", "NoHub", "NonFastForward", "NotFound",
    "ObjectUnavailable", "RangeNotSatisfiable", "RepoNotFound", "DatabaseFull", "ServerBusy", "StorageError", "StorageFull",
    "StorageUnavailable", "StoredObjectMissing", "Unauthorized", "Unprocessable", "UnknownCommits",
]


# -- 400: the request is malformed ---------------------------------------------------

class BadRequest(MuseError):
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidField(BadRequest):
    code = "invalid_field"

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


# -- 401 / 403: who is asking --------------------------------------------------------

class Unauthorized(MuseError):
    code = "unauthorized"


class Forbidden(MuseError):
    code = "forbidden"


# -- 404: no such thing (or not visible to the caller) -------------------------------

class NotFound(MuseError):
    code = "not_found"


class RepoNotFound(NotFound):
    code = "repo_not_found"

    def __init__(self, owner: str, name: str) -> None:
        super().__init__(f"no repository {owner}/{name}")


class UnknownCommits(NotFound):
    code = "unknown_commits"

    def __init__(self, commit_ids: list[str]) -> None:
        shown = ", ".join(commit_ids[:20]) + (" …" if len(commit_ids) > 20 else "")
        super().__init__(f"unknown commits or branches: {shown}")
        self.commit_ids = commit_ids


class MPackMissing(NotFound):
    code = "mpack_missing"


# -- 409: the only conflict the Muse CLI understands ---------------------------------

class NonFastForward(MuseError):
    code = "non_fast_forward"

    def __init__(self, branch: str, head: str, tip: str) -> None:
        super().__init__(f"{branch}: {tip} does not descend from the current head {head}; push with force to replace it")
        self.branch, self.head, self.tip = branch, head, tip


class AlreadyExists(MuseError):
    code = "already_exists"


class Conflict(MuseError):
    """The thing exists but is in the wrong state for this request."""

    code = "conflict"


# -- 408 / 413 / 416 / 422 / 503 --------------------------------------------------------

class BodyTimeout(MuseError):
    """The request body did not arrive within its deadline (MPACKHUB_BODY_TIMEOUT)."""

    code = "body_timeout"


class BodyTooLarge(MuseError):
    """Over the route's byte limit."""

    code = "body_too_large"


class BodyTooComplex(BodyTooLarge):
    """Within its byte limit, but it decodes to more objects than its size allows (issue 9)."""

    code = "body_too_complex"


class ServerBusy(MuseError):
    """Every body reader, or every request pack builder, of this worker is taken: retry shortly."""

    code = "busy"
    retry_after = 1  # seconds, answered in Retry-After


class ClientShareTaken(ServerBusy):
    """This client holds its share of a worker's request builders or downloads already: the refusal is
    its own, not the work's (a single-flight follower from another client does not inherit it)."""


class CacheFull(ServerBusy):
    """A request's pack build would leave the store's disk with less than its reserve (packs are a cache,
    pushes need the disk) and no cached pack was idle enough to evict: retry later."""

    code = "cache_full"
    retry_after = 60


class RangeNotSatisfiable(MuseError):
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"range outside 0-{max(size - 1, 0)}")
        self.size = size


class Unprocessable(MuseError):
    """The request is well-formed but its content does not verify."""

    code = "unprocessable"


class MissingReference(Unprocessable):
    code = "missing_reference"

    def __init__(self, what: str, ids: list[str]) -> None:
        shown = ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")
        super().__init__(f"missing {what}: {shown}")
        self.ids = ids


class BundleTooLarge(Unprocessable):
    code = "bundle_too_large"


# -- 503: stored data the hub cannot serve until it is repaired ------------------------

class ObjectUnavailable(MuseError):
    """A blob a repository names is damaged or missing in storage (quarantined, awaiting a re-push)."""

    code = "object_unavailable"

    def __init__(self, object_id: str, why: str = "missing") -> None:
        super().__init__(f"object {object_id} is {why} in the hub's storage; the repository's owner must push it "
                         "again (a push re-uploads every object the hub lists as missing); see mpackhub fsck")
        self.object_id = object_id


class CorruptStoredBlob(ObjectUnavailable):
    """A stored blob does not hash to its digest: the build stops instead of shipping it (503, as quarantined)."""

    def __init__(self, digest: str, why: str) -> None:
        super().__init__(digest, f"corrupt ({why})")
        self.digest, self.why = digest, why


# -- 507: no space left -----------------------------------------------------------------

class DatabaseFull(StorageError):
    """The database could not write: its disk (or its size limit) is full. Nothing was changed."""

    code = "database_full"

    def __init__(self) -> None:
        super().__init__("the hub's database is full (no space left on its disk); nothing was changed: "
                         "free space, then try again")


# -- not HTTP: the command line names a hub that is not there ------------------------

class NoHub(MuseError):
    """``mpackhub admin|jobs|gc`` pointed at a directory that holds no hub (nothing is created)."""

    code = "no_hub"

    def __init__(self, home: object, why: str) -> None:
        super().__init__(f"no hub at {home} ({why}); start one there with `mpackhub serve`, "
                         "or name it with --home DIR (or MPACKHUB_HOME), or a running one with --url URL")
        self.home = home
