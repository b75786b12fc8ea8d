"""The few domain exceptions library code raises. Only the CLI turns them into exit codes."""

from __future__ import annotations


class LabelblocksError(Exception):
    """Base of every error labelblocks reports to a user (exit code 1)."""

    exit_code = 1


class InvalidInput(LabelblocksError):
    """Input that cannot be accepted: says what was expected, what arrived, what to do."""


class UsageError(LabelblocksError):
    """The command was called wrongly (exit code 2)."""

    exit_code = 2


class ProjectNotFound(LabelblocksError):
    pass


class NotFound(LabelblocksError):
    pass


class BlockError(LabelblocksError):
    """A block failed on a sample or could not be set up."""


class StopJob(BlockError):
    """A failure no other sample can get past (a provider refusing the API key): raised from a
    block, it stops the job at once (resumable once fixed) instead of failing every sample."""


class PluginError(LabelblocksError):
    pass


class MissingSecret(LabelblocksError):
    pass


class StorageError(LabelblocksError):
    """The project's storage refused a write: the disk is full, or the project is read-only.
    Nothing of the refused write is kept. ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_ENOSPC = {28, 122}  # ENOSPC, EDQUOT
_EREADONLY = {13, 30}  # EACCES, EROFS
_SQLITE_FULL = 13
_SQLITE_READONLY = 8


def storage_error(exc: BaseException) -> StorageError | None:
    """``exc`` as a StorageError when it is the storage refusing a write (a full disk or
    quota, a read-only folder or database), else None. Reads the SQLite error code of a
    driver error (also inside SQLAlchemy's wrapper) without importing either."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    errno = getattr(orig, "errno", None) if isinstance(orig, OSError) else None
    if code is not None:
        code &= 0xFF  # extended result codes carry the primary code in their low byte
    if code == _SQLITE_FULL or errno in _ENOSPC:
        return StorageError("the disk is full: nothing was stored; free space and try again", 507)
    if code == _SQLITE_READONLY or errno in _EREADONLY:
        where = f" ({orig.filename})" if isinstance(orig, OSError) and orig.filename else ""
        return StorageError(f"the project is read-only{where}: this command writes to it; "
                            "read-only commands still work", 503)
    return None
