"""Errors whose message already names the file or key at fault and says what to do.

Stage entry points print these without a traceback; anything else is a bug and keeps its.
"""

import errno
import os
import shutil
from pathlib import Path


class PipelineError(Exception):
    """Base of every expected, user-actionable failure."""


class ConfigError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class FetchError(PipelineError):
    """The dataset source could not be fetched or did not match its manifest."""


class DataError(PipelineError, ValueError):
    """A dataset file is missing, unreadable or inconsistent."""


class ModelError(PipelineError):
    """Pretrained weights or a checkpoint are missing, unreadable or do not fit the model."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


class TrainingError(PipelineError):
    """Training cannot go on (non-finite loss, unusable device)."""


_PathArg = str | bytes | os.PathLike | None


class StorageError(PipelineError):
    """A file or folder cannot be written: the disk is full, read-only, or not writable by this user.
    ``os_error``, ``target`` and ``folder`` are what storage_error was given."""

    os_error: OSError | None = None
    target: Path | None = None
    folder: Path | None = None


def write_failure(exc: OSError) -> bool:
    """Whether ``exc`` says a write cannot be done here (disk full, read-only, no permission)."""
    return exc.errno in _WRITE_ERRNOS


def storage_error(exc: OSError, path: _PathArg, folder: _PathArg = None) -> StorageError:
    """One line for a failed write of ``path`` (in ``folder``, by default its parent): what is wrong
    and what to free or fix. The temporary names of atomic writes are not shown: ``path`` is the target."""
    target = Path(os.fsdecode(path)) if path is not None else None
    where = Path(os.fsdecode(folder)) if folder is not None else target.parent if target else Path.cwd()
    where = Path.cwd() if where == Path() else where
    writing = f"cannot write {target}" if target else "a write failed"
    error = _storage_message(exc, target, where, writing)
    error.os_error, error.target, error.folder = exc, target, where
    return error


def _storage_message(exc: OSError, target: Path | None, where: Path, writing: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        probe = where  # the folder may not exist yet: its disk is that of its nearest parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = f"{shutil.disk_usage(probe).free:,} bytes free"
        except OSError:
            free = "no space left"
        what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on the device"
        return StorageError(f"{writing}: {what} ({free} on the disk of {where}); free some space there and run again")
    if exc.errno == errno.EROFS:
        return StorageError(
            f"{writing}: {where} is on a read-only file system; remount it writable "
            "or run the pipeline in a writable copy of the project"
        )
    return StorageError(
        f"{writing}: permission denied in {where}; make it writable by this user "
        f"(e.g. `chmod u+w {where}`) and run again"
    )


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
