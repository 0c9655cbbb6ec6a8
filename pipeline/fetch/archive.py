"""Safe extraction of .zip and .tar(.gz) archives: nothing may land outside the target."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class UnsafeArchiveError(ValueError):
    """An archive entry would escape the target folder or is a link/device."""


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise UnsafeArchiveError(
            f"{archive}: entry {name!r} would be written outside the target folder; refusing to extract"
        )


def extract(archive: str | Path, target: str | Path) -> None:
    """Extract ``archive`` into ``target``, refusing escaping paths, links and special files."""
    archive, target = Path(archive), Path(target)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _check_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(
                        f"{archive}: entry {info.filename!r} is a symbolic link; refusing to extract"
                    )
            bundle.extractall(target)
        return
    with tarfile.open(archive) as bundle:
        for member in bundle.getmembers():
            _check_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: entry {member.name!r} is a link or special file; refusing to extract"
                )
        bundle.extractall(target, filter="data")
