"""The prepared split on disk: the split stage writes it, training and evaluation read it.

``data/split/<name>/images.npy`` and ``masks.npy`` per split, and ``split.json``, which
``SplitInfo`` reads and writes: the data's content hash, the size the images were resized
to, the classes the mask values stand for, and which pair ids went where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classes import ClassSpec
from .files import atomic_path, read_json, write_json

SPLITS = ("train", "val", "test")
INFO_FILE = "split.json"


@dataclass(frozen=True)
class SplitInfo:
    data_hash: str
    image_size: int
    # What the mask values mean travels with them: train sizes the network from it.
    classes: ClassSpec
    counts: dict[str, int]
    ids: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_hash": self.data_hash,
            "image_size": self.image_size,
            "classes": self.classes.to_dict(),
            "counts": self.counts,
            "ids": self.ids,
        }

    @classmethod
    def read(cls, split_dir: Path) -> SplitInfo:
        saved = read_json(split_dir / INFO_FILE)
        return cls(
            saved["data_hash"],
            saved["image_size"],
            ClassSpec.from_dict(saved["classes"]),
            saved["counts"],
            saved["ids"],
        )


def write_split(out_dir: Path, ids: list[str], images: np.ndarray, masks: np.ndarray, info: SplitInfo) -> None:
    """Each split's rows of ``images`` (N x S x S x 3) and ``masks`` (N x S x S), then ``split.json``."""
    position = {id_: index for index, id_ in enumerate(ids)}
    for name in SPLITS:
        rows = [position[id_] for id_ in info.ids[name]]
        for kind, array in (("images", images), ("masks", masks)):
            with atomic_path(out_dir / name / f"{kind}.npy") as tmp, tmp.open("wb") as handle:
                np.save(handle, array[rows])
    write_json(out_dir / INFO_FILE, info.to_dict())


def load_split(split_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.load(split_dir / name / "images.npy", mmap_mode="r"),
        np.load(split_dir / name / "masks.npy", mmap_mode="r"),
    )
