"""The ``data.source`` values that name a generated dataset instead of a place to fetch from.

In core, not in fetch: config checks their count when params load, before any stage works, and
tracking records them as code; the generators themselves live in ``fetch/``.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNTHETIC = "synthetic"  # shapes on textured backgrounds, small images
SYNTHETIC_LINES = "synthetic-lines"  # curves a few pixels wide on large images
# How many pairs each generator makes when data.source names no count; None: N must be given.
DEFAULT_COUNTS: dict[str, int | None] = {SYNTHETIC: 64, SYNTHETIC_LINES: None}
MAX_COUNT = 100_000


@dataclass(frozen=True)
class GeneratedSource:
    generator: str
    count: int


def generated_source(source: str) -> GeneratedSource | None:
    """The generator and pair count ``source`` names (``synthetic``, ``synthetic:N``,
    ``synthetic-lines:N``); None for a source to fetch. A generator's name with a bad count
    raises ValueError saying what to write (without the key, which the caller names)."""
    generator, colon, count = source.partition(":")
    if generator not in DEFAULT_COUNTS:
        return None
    default = DEFAULT_COUNTS[generator]
    if not colon and default is not None:
        return GeneratedSource(generator, default)
    # isascii: str.isdigit also accepts digits such as '²' that int() refuses.
    if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_COUNT):
        forms = f"{generator} or {generator}:N" if default is not None else f"{generator}:N"
        raise ValueError(f"write {forms} with N a whole number from 1 to {MAX_COUNT}")
    return GeneratedSource(generator, int(count))
