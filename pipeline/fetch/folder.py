"""Copy a dataset folder without letting anything in it reach outside it.

A symbolic link is followed only when its target lies inside the folder (a link to
``~/.aws/credentials`` would otherwise land in ``data/raw``, the DVC cache and the team's
remote); a folder link that leads back to one of its own parents, a pipe, socket or device
file is refused too, since copying it would never end.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ..core.errors import FetchError


def copy_folder(source: Path, dest: Path) -> None:
    """Copy the files under ``source`` into the new folder ``dest``, following only links that stay inside."""
    root = source.resolve(strict=True)
    _copy(root, dest, root, Path(source), frozenset({root}))


def _copy(folder: Path, dest: Path, root: Path, shown: Path, parents: frozenset[Path]) -> None:
    dest.mkdir()
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        path, name = Path(entry.path), shown / entry.name
        target = path
        if entry.is_symlink():
            try:
                target = path.resolve()
            except (OSError, RuntimeError):  # RuntimeError: a loop of links, before Python 3.13
                raise FetchError(f"data.source: {name} is a symbolic link that loops; remove it") from None
            if not target.is_relative_to(root):
                raise FetchError(
                    f"data.source: {name} is a symbolic link to {target}, outside the dataset folder {root}; "
                    "refusing to copy it. Copy the file itself into the dataset, or remove the link."
                )
            if not target.exists():
                raise FetchError(f"data.source: {name} is a broken symbolic link (to {target}); remove or fix it")
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            if target in parents:
                raise FetchError(
                    f"data.source: {name} is a symbolic link to {target}, one of its own parent folders "
                    "(copying would never end); remove the link"
                )
            _copy(target, dest / entry.name, root, name, parents | {target})
        elif stat.S_ISREG(mode):
            shutil.copyfile(target, dest / entry.name)
        else:
            raise FetchError(
                f"data.source: {name} is not a regular file (a pipe, socket or device); remove it from the dataset"
            )
