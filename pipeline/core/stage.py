"""What every stage entry point shares: --help, clean errors, and SIGTERM treated like Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import PipelineError, storage_error, write_failure

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


INTERRUPTED_NOTE = "interrupted; outputs written so far are complete files. Run `dvc repro` to continue."


def exit_interrupted(name: str, note: str = "") -> NoReturn:
    """What Ctrl-C prints, whenever it comes: one line, exit status 130. Stage files call it
    from around their imports too, which take seconds (torch, MLflow) before run_stage runs."""
    print(f"{name}: {note or INTERRUPTED_NOTE}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def printable_names() -> None:
    """File names need not be UTF-8 (they reach Python with surrogate escapes): print them escaped
    rather than fail on them with a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_stage(name: str, main: Callable[[], None], description: str) -> None:
    """Run a stage's ``main``. It takes no arguments (params.yaml configures it): ``--help``
    prints ``description`` (what the stage reads and writes) and anything else is refused."""
    parser = argparse.ArgumentParser(
        prog=f"python stages/{name}.py",
        description=description,
        epilog="Run by `dvc repro` (see dvc.yaml); every setting is a key in params.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    printable_names()
    try:
        main()
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as exc:
        exit_interrupted(name, str(exc))
    except OSError as exc:
        # Disk full, read-only or not writable, anywhere: the user's to fix, not a bug. (The atomic
        # writers of core/files.py already raise these as StorageError naming the target.)
        if not write_failure(exc):
            raise
        if exc.errno in (errno.EACCES, errno.EPERM):  # a read or a write: say only what was refused
            shown = os.fsdecode(exc.filename) if exc.filename is not None else "a file"
            message = f"permission denied: {shown}; check its (and its folder's) permissions for this user"
        else:
            message = str(storage_error(exc, exc.filename))
        print(f"{name}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
