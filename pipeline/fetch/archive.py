"""Safe extraction of .zip and .tar(.gz) archives: nothing may land outside the target, and an
archive bomb is refused before anything is written."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

# Archive bomb limits, checked on the sizes the archive declares before anything is extracted
# (extraction never writes more than declared). Raise them here for a dataset that really is
# this large or this compressible. Photos and PNG masks barely compress (the reference
# dataset: 1.1x); deflate cannot exceed about 1030x, which bombs reach.
MAX_EXTRACTED_BYTES = 64 * 2**30  # all entries together
MAX_COMPRESSION_RATIO = 200  # expanded / compressed size of an entry (of the whole archive for .tar.gz) ...
RATIO_FREE_BYTES = 64 * 2**20  # ... once it expands past this: small, very compressible files are harmless


class UnsafeArchiveError(ValueError):
    """An archive entry would escape the target folder, is a link/device, or expands absurdly."""


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise UnsafeArchiveError(
            f"{archive}: entry {name!r} would be written outside the target folder; refusing to extract"
        )


def _check_sizes(archive: Path, target: Path, sizes: list[tuple[str, int, int]]) -> None:
    """``sizes``: (what, expanded bytes, compressed bytes) per entry or group of entries."""
    for what, expanded, compressed in sizes:
        if expanded > RATIO_FREE_BYTES and expanded > MAX_COMPRESSION_RATIO * max(compressed, 1):
            raise UnsafeArchiveError(
                f"{archive}: {what} expands {expanded / max(compressed, 1):.0f}-fold to {expanded:,} bytes "
                f"(limit {MAX_COMPRESSION_RATIO}-fold, pipeline/fetch/archive.py MAX_COMPRESSION_RATIO): "
                "an archive bomb? Refusing to extract"
            )
    total = sum(expanded for _, expanded, _ in sizes)
    if total > MAX_EXTRACTED_BYTES:
        raise UnsafeArchiveError(
            f"{archive}: expands to {total:,} bytes, more than the limit of {MAX_EXTRACTED_BYTES:,} "
            "(pipeline/fetch/archive.py MAX_EXTRACTED_BYTES); refusing to extract"
        )
    free = shutil.disk_usage(target.parent).free
    if total > free:
        raise UnsafeArchiveError(
            f"{archive}: expands to {total:,} bytes but only {free:,} are free on the disk of {target.parent}"
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
            entries = [(f"entry {i.filename!r}", i.file_size, i.compress_size) for i in bundle.infolist()]
            _check_sizes(archive, target, entries)
            bundle.extractall(target)
        return
    with tarfile.open(archive) as bundle:
        for member in bundle.getmembers():
            _check_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: entry {member.name!r} is a link or special file; refusing to extract"
                )
        # A compressed tar has no per-entry sizes: its whole expansion is held against its file size.
        members = bundle.getmembers()
        largest = max(members, key=lambda member: member.size).name if members else ""
        what = f"its {len(members)} entries (the largest {largest!r})"
        _check_sizes(archive, target, [(what, sum(member.size for member in members), archive.stat().st_size)])
        bundle.extractall(target, filter="data")
