"""Atomic writes: a crash or Ctrl-C leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StorageError, storage_error, write_failure


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp/mkdtemp create owner-only entries; outputs should get the usual permissions.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _leftover_pattern(path: Path) -> re.Pattern[str]:
    """The names atomic_path/atomic_dir give the siblings of ``path``: ``.NAME.tmp-PID.XXXX.tmp``
    (being written) and ``.NAME.old-PID`` (the previous folder, while it is swapped out)."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?:old-(\d+)|tmp-(\d+)\.\w+\.tmp)")


def remove_leftovers(path: Path) -> None:
    """Remove what an interrupted or killed writer of ``path`` left beside it: only the pipeline's
    own temporary names, and only those whose process is gone. If the process died between the
    two renames of a folder swap (``path`` missing, ``.NAME.old-PID`` there), the old folder,
    the last complete one, is put back instead."""
    pattern = _leftover_pattern(path)
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return
    for entry in sorted(entries, key=lambda entry: entry.name):
        match = pattern.fullmatch(entry.name)
        # Only one atomic_dir of ``path`` runs in a process: names with this process's id are
        # left by an earlier process that had the same id.
        pid = int(match[1] or match[2]) if match else 0
        if match is None or (pid != os.getpid() and _alive(pid)):
            continue
        leftover = Path(entry.path)
        if match[1] and entry.is_dir(follow_symlinks=False) and not (path.exists() or path.is_symlink()):
            os.replace(leftover, path)
            print(f"{path}: restored from {leftover.name}, left by an interrupted run")
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(leftover)
            print(f"{path}: removed {leftover.name}, left by an interrupted run")
        else:
            leftover.unlink()


def _our_write(exc: OSError, *places: Path) -> bool:
    """Whether ``exc`` is a failure to write here: disk full and read-only always are (only writes
    hit them); a permission error only if it names one of ``places`` or something under them
    (reading an unreadable source file is the source's problem, not the target's)."""
    if not write_failure(exc):
        return False
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return True
    named = [Path(os.fsdecode(name)) for name in (exc.filename, exc.filename2) if name is not None]
    return not named or any(name == place or name.is_relative_to(place) for name in named for place in places)


@contextmanager
def _setting_up(path: Path) -> Iterator[None]:
    """Creating the parent folder and the temporary sibling of ``path``: a write failure is one line."""
    try:
        yield
    except OSError as exc:
        if not write_failure(exc):
            raise
        folder = Path(os.fsdecode(exc.filename)).parent if exc.filename is not None else path.parent
        raise storage_error(exc, path, folder) from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    A full disk, a read-only folder or a missing write permission, here or in the block, is a
    one-line StorageError naming ``path``; the temporary file is removed either way."""
    path = Path(path)
    with _setting_up(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # No leftover sweep here (it lists the folder: predict writes thousands of files into one).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        if _our_write(exc, tmp_path, path):
            raise storage_error(exc, path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory that replaces ``path`` if the block succeeds.

    Leftovers of an interrupted earlier swap of ``path`` are cleaned up first (remove_leftovers);
    write failures are one-line StorageErrors naming ``path``, and ``path`` keeps its old content."""
    path = Path(path)
    with _setting_up(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        tmp_path = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp"))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        yield tmp_path
        os.chmod(tmp_path, DIR_MODE)
        if path.exists():
            # Move the old tree aside first so the swap itself is a pair of renames.
            os.replace(path, old)
            os.replace(tmp_path, path)
        else:
            os.replace(tmp_path, path)
    except OSError as exc:
        if _our_write(exc, tmp_path, path):
            raise storage_error(exc, path) from None
        raise
    except StorageError as exc:
        # A write inside the block: name the file by the path it was going to have, not the staging one.
        if exc.os_error is None or exc.target is None or not exc.target.is_relative_to(tmp_path):
            raise
        folder = exc.folder or exc.target.parent
        final = path / exc.target.relative_to(tmp_path)
        shown = path / folder.relative_to(tmp_path) if folder.is_relative_to(tmp_path) else folder
        raise storage_error(exc.os_error, final, shown) from None
    finally:
        if old.exists() and not path.exists():  # stopped between the two renames: the old tree goes back
            os.replace(old, path)
        for leftover in (tmp_path, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def write_png(path: str | Path, image: Any) -> None:
    """An RGB (H x W x 3) or single-channel (H x W) uint8 array as a PNG."""
    import cv2  # only the stages that write images pay for importing OpenCV

    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` of ``obj``, atomically and byte-reproducibly.

    Given a file name, torch names the archive's inner folder after it, so a random temporary
    name would make two identical checkpoints differ; given an open file, it always writes
    ``archive/``.
    """
    import torch  # only the stages that write tensors pay for importing torch

    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
