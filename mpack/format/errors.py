"""The root of every error of ours (``MuseError``), malformed ids, and the mpack errors.

Errors raised while reading an mpack form one family rooted at ``MPackError``.

Every way a pack can be wrong ends in one of these, never in ``struct.error``,
a msgpack or zstd exception, ``KeyError`` or ``UnicodeDecodeError``. Each
carries the data that describes the failure, so callers never parse messages.
I/O errors from the underlying file (``OSError``) are not format errors and
pass through unchanged.
"""
from __future__ import annotations


class MuseError(Exception):
    """Base of every domain error. ``code`` is the stable machine-readable name."""

    code = "error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code


class InvalidId(MuseError):
    code = "invalid_id"

    def __init__(self, what: str, value: object) -> None:
        shown = repr(value)
        super().__init__(f"malformed {what}: {shown[:80]}")
        self.what = what


class MPackError(MuseError):
    """Base of every error about the content of an mpack."""

    code = "mpack_invalid"


class BadMagic(MPackError):
    """The stream does not start with the magic bytes ``MUSE`` NUL."""

    code = "mpack_bad_magic"

    def __init__(self, found: bytes) -> None:
        super().__init__(f"not an mpack: starts with {found[:8]!r}, expected b'MUSE\\x00'")
        self.found = found


class UnsupportedVersion(MPackError):
    """The header names a version or flags this reader does not implement."""

    code = "mpack_unsupported_version"

    def __init__(self, version: int, flags: int, supported: int) -> None:
        super().__init__(
            f"mpack version {version} with flags 0x{flags:02x} is not supported "
            f"(this reader reads version {supported} with flags 0x00)"
            + (": a pack built before the hub's upgrade; fetch again for a current one" if version < supported else "")
        )
        self.version, self.flags, self.supported = version, flags, supported


class Truncated(MPackError):
    """The stream ended before a field was complete."""

    code = "mpack_truncated"

    def __init__(self, offset: int, what: str, needed: int, got: int) -> None:
        super().__init__(f"mpack truncated at byte {offset + got}: {what} needs {needed} bytes, only {got} left")
        self.offset, self.what, self.needed, self.got = offset, what, needed, got


class ChecksumMismatch(MPackError):
    """The trailer's sha256 is not the sha256 of the bytes before it."""

    code = "mpack_checksum_mismatch"

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"mpack checksum mismatch: trailer says {expected}, content hashes to {actual}")
        self.expected, self.actual = expected, actual


class IdMismatch(MPackError):
    """A blob, snapshot or commit does not hash to the id it claims."""

    code = "mpack_id_mismatch"

    def __init__(self, kind: str, claimed: str, actual: str) -> None:
        super().__init__(f"{kind} {claimed} does not match its content (sha256 {actual})")
        self.kind, self.claimed, self.actual = kind, claimed, actual


class OversizedRecord(MPackError):
    """A length field exceeds the limit for its record or chunk."""

    code = "mpack_oversized_record"

    def __init__(self, what: str, length: int, limit: int) -> None:
        super().__init__(f"{what} of {length} bytes exceeds the limit of {limit} bytes")
        self.what, self.length, self.limit = what, length, limit


class MalformedRecord(MPackError):
    """A record, chunk or the trailer is not laid out as the format requires."""

    code = "mpack_malformed_record"

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"malformed mpack at byte {offset}: {why}")
        self.offset, self.why = offset, why


class MissingBase(MPackError):
    """The pack's first snapshot is a delta against a snapshot the receiver does not hold."""

    code = "mpack_missing_base"

    def __init__(self, base: str) -> None:
        super().__init__(f"the pack's first snapshot is a delta against snapshot {base}, which this receiver "
                         "does not hold")
        self.base = base
class InvalidRecord(MuseError):
    """A commit, snapshot or branch name breaks a record rule (``mpack.format.rules``).

    ``field`` names the offending field (``commit.metadata``, ``snapshot.manifest['../x']``,
    ``branch``), so a client can tell which one to fix.
    """

    code = "invalid_record"

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why
