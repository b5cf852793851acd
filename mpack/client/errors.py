"""Errors about the client's Muse repositories on disk."""
from __future__ import annotations

from mpack.format.errors import MuseError


class LayoutError(MuseError):
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
