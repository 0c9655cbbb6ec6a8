"""Safe extraction of zip and tar (plain, gzip, bzip2, xz) archives, recognised by content: nothing
may land outside the target, no entry may hide another of the same name, and an archive bomb is
refused before anything is written."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

# Archive bomb limits, checked on the sizes the archive declares before anything is extracted
# (extraction never writes more than declared). Raise them here for a dataset that really is
# this large or this compressible. Photos and PNG masks barely compress (the reference
# dataset: 1.1x); deflate cannot exceed about 1030x, which bombs reach.
MAX_EXTRACTED_BYTES = 64 * 2**30  # all entries together
MAX_COMPRESSION_RATIO = 200  # expanded / compressed size of an entry (of the whole archive for .tar.gz) ...
RATIO_FREE_BYTES = 64 * 2**20  # ... once it expands past this: small, very compressible files are harmless


class UnsafeArchiveError(ValueError):
    """An archive entry would escape the target folder, is a link/device, or expands absurdly."""


class NotAnArchiveError(ValueError):
    """The file is not a zip or tar archive, whatever its name says."""


# Archives are recognised by their first bytes, never by their name: a download URL need not end
# in .zip (``/download?id=1``), and a file's suffix may lie (a zip named .tar.gz).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: a compressed tar
TAR_MAGIC_OFFSET = 257  # "ustar" in the first header of a POSIX or GNU tar


def archive_kind(path: str | Path) -> str | None:
    """``"zip"`` or ``"tar"`` (plain or compressed) from the file's content; None for anything else."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(COMPRESSED_MAGIC) or head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(path):  # a zip with something in front of it (a self-extracting archive)
        return "zip"
    return None


def describe_content(path: str | Path) -> str:
    """What a file that is not an archive looks like, for an error message: an HTML page, text, or bytes."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "an empty file"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "an HTML page (a login, error or download-confirmation page?)"
    try:
        shown = head[:60].decode("utf-8")
    except UnicodeDecodeError:
        return f"not a zip or tar archive (it starts with bytes {head[:8].hex(' ')})"
    return f"text, not a zip or tar archive (it starts {shown!r})"


def _check_unique(archive: Path, names: list[str]) -> None:
    """Two entries under one name: extraction would keep one of them silently."""
    seen: set[str] = set()
    for name in names:
        key = PurePosixPath(name.replace("\\", "/")).as_posix()
        if name.endswith(("/", "\\")):
            continue  # a folder listed twice is harmless
        if key in seen:
            raise UnsafeArchiveError(
                f"{archive}: entry {name!r} appears more than once, with possibly different content; "
                "refusing to pick one. Re-create the archive with each file once"
            )
        seen.add(key)


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
    kind = archive_kind(archive)
    if kind is None:
        raise NotAnArchiveError(f"{archive}: {describe_content(archive)}")
    if kind == "zip":
        with zipfile.ZipFile(archive) as bundle:
            _check_unique(archive, bundle.namelist())
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
        _check_unique(archive, [member.name + ("/" if member.isdir() else "") for member in bundle.getmembers()])
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
