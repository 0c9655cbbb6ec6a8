"""The classes a model segments: their names (background first) and how masks encode them.

Two classes is binary segmentation, the reference case: one logit channel, masks stored as
0/255 (or 0/1). More classes get one logit channel each and masks that hold class ids,
either directly (index masks: pixel value = class id) or as colours (an RGB palette with
one colour per class, in class order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSpec:
    names: tuple[str, ...]
    palette: tuple[Colour, ...] | None  # None: masks hold class ids (or 0/255 for two classes)

    @classmethod
    def of(cls, names: Sequence[str], palette: Sequence[Sequence[int]] | None) -> ClassSpec:
        return cls(
            tuple(names), None if palette is None else tuple(tuple(int(c) for c in colour) for colour in palette)
        )

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def binary(self) -> bool:
        return self.count == 2

    @property
    def channels(self) -> int:
        """Logit channels of the network: one for binary (a sigmoid), one per class otherwise (a softmax)."""
        return 1 if self.binary else self.count

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.names[1:]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "palette": None if self.palette is None else [list(c) for c in self.palette]}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ClassSpec:
        return cls.of(saved["names"], saved["palette"])


# The reference dataset's classes (data.classes in the committed params.yaml): people on a background.
PERSON = ClassSpec(("background", "person"), None)
