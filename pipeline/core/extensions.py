"""Registries of the implementations a ``params.yaml`` key chooses by name, in the manner of
timm's ``@register_model``: each implementation registers itself where it is defined, so adding
one is one edit in one file.

Two keys choose so: ``data.layout`` (``LAYOUTS`` in ``split/layouts.py``) and ``train.loss``
(``LOSSES`` in ``model/losses.py``). ``core/config.py`` validates both at start-up by importing
those two modules inside its validators (tests/test_layering.py allows exactly that).
docs/extending.md shows how to add one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

# Every such key also accepts `auto`: the pipeline chooses (the registry's module says how).
AUTO = "auto"

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Names ``key`` accepts -> what each one is, in the order they were registered."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name == AUTO or name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is {'reserved' if name == AUTO else 'registered already'}")
        self._entries[name] = entry
        return entry

    def choices(self) -> list[str]:
        """What ``key`` accepts: ``auto`` and every registered name."""
        return [AUTO, *self._entries]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
