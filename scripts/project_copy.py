"""Copy a project as a clone would hold it, plus uncommitted edits: for `make demo` and the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def copy_tracked_files(project: Path, dest: Path) -> None:
    """Tracked and not-ignored files only: what a clone holds, plus uncommitted edits."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=project, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = project / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
