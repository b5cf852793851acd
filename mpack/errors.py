"""Domain errors: a small hierarchy that carries data, mapped to HTTP once.

Every failure a caller can cause is one of these. ``mpack.http.errors`` maps
the families below to status codes; nothing else decides a status, and
nothing recognises an error by its message.
"""
from __future__ import annotations


class HubError(Exception):
    """Base of every domain error. ``code`` is the stable machine-readable name."""

    code = "error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code


# -- 400: the request is malformed ---------------------------------------------------

class BadRequest(HubError):
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidField(BadRequest):
    code = "invalid_field"

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


class InvalidId(BadRequest):
    code = "invalid_id"

    def __init__(self, what: str, value: object) -> None:
        shown = repr(value)
        super().__init__(f"malformed {what}: {shown[:80]}")
        self.what = what


# -- 401 / 403: who is asking --------------------------------------------------------

class Unauthorized(HubError):
    code = "unauthorized"


class Forbidden(HubError):
    code = "forbidden"


class InvalidUrlToken(Forbidden):
    """A signed download URL that is missing, malformed, tampered or expired."""

    code = "invalid_url_token"


# -- 404: no such thing (or not visible to the caller) -------------------------------

class NotFound(HubError):
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


class StoredObjectMissing(NotFound):
    """The store holds no object under this digest in this namespace."""

    code = "stored_object_missing"

    def __init__(self, namespace: str, digest: str) -> None:
        super().__init__(f"no {namespace} object {digest} in storage")
        self.namespace, self.digest = namespace, digest


# -- 409: the only conflict the Muse CLI understands ---------------------------------

class NonFastForward(HubError):
    code = "non_fast_forward"

    def __init__(self, branch: str, head: str, tip: str) -> None:
        super().__init__(f"{branch}: {tip} does not descend from the current head {head}; push with force to replace it")
        self.branch, self.head, self.tip = branch, head, tip


class AlreadyExists(HubError):
    code = "already_exists"


# -- 413 / 416 / 422 ------------------------------------------------------------------

class BodyTooLarge(HubError):
    code = "body_too_large"


class RangeNotSatisfiable(HubError):
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"range outside 0-{max(size - 1, 0)}")
        self.size = size


class Unprocessable(HubError):
    """The request is well-formed but its content does not verify."""

    code = "unprocessable"


class ContentMismatch(Unprocessable):
    code = "id_mismatch"

    def __init__(self, what: str, claimed: str, actual_hex: str) -> None:
        super().__init__(f"{what} {claimed} does not match its content (sha256 {actual_hex})")
        self.claimed, self.actual_hex = claimed, actual_hex


class MissingReference(Unprocessable):
    code = "missing_reference"

    def __init__(self, what: str, ids: list[str]) -> None:
        shown = ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")
        super().__init__(f"missing {what}: {shown}")
        self.ids = ids


class BundleTooLarge(Unprocessable):
    code = "bundle_too_large"


# -- operator-side failures -----------------------------------------------------------

class StorageError(HubError):
    """The store could not complete an operation (disk full, I/O error)."""

    code = "storage_error"


# -- the client's Muse repositories on disk ---------------------------------------------

class LayoutError(HubError):
    """A Muse repository on disk is missing, damaged, or asked to do something unsafe."""

    code = "layout_error"


class NotARepo(LayoutError):
    code = "not_a_repo"

    def __init__(self, path: object) -> None:
        super().__init__(f"not a Muse repository (no .muse/repo.json): {path}")
        self.path = path


class UnsafePath(LayoutError):
    code = "unsafe_path"

    def __init__(self, path: object, why: str) -> None:
        super().__init__(f"refusing to check out {path!r}: {why}")
        self.path, self.why = path, why
