"""What every stage entry point shares: clean errors, and SIGTERM treated like Ctrl-C."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from .errors import PipelineError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_stage(name: str, main: Callable[[], None]) -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        main()
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as exc:
        note = str(exc) or "interrupted; outputs written so far are complete files. Run `dvc repro` to continue."
        print(f"{name}: {note}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
