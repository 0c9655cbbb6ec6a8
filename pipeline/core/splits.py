"""The prepared split on disk: the split stage writes it, training and evaluation read it.

``data/split/<name>/images.npy`` and ``masks.npy`` per split, and ``split.json``, which
``SplitInfo`` reads and writes: the data's content hash, the size the images were resized
to, the classes the mask values stand for, and which pair ids went where. The test split also
keeps its repaired masks at each photo's own size (``PHOTO_SIZE_MASKS``): its headline scores
are taken at the size ``predict`` delivers masks at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classes import ClassSpec
from .errors import DataError
from .files import atomic_path, read_json, write_json, write_png

SPLITS = ("train", "val", "test")
INFO_FILE = "split.json"
# Inside a split's folder: one PNG of class ids per image at its photo's own size, named by the
# image's position in split.json's ids (never by the id, which comes from a user's file name).
PHOTO_SIZE_MASKS = "photo_size_masks"


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


def _photo_size_mask_path(split_dir: Path, name: str, index: int) -> Path:
    return split_dir / name / PHOTO_SIZE_MASKS / f"{index:06d}.png"


def write_photo_size_mask(split_dir: Path, name: str, index: int, mask: np.ndarray) -> None:
    """The H x W uint8 class ids of split ``name``'s image number ``index``, at its photo's size."""
    write_png(_photo_size_mask_path(split_dir, name, index), mask)


def read_photo_size_masks(split_dir: Path, name: str, count: int) -> Iterator[np.ndarray]:
    """Split ``name``'s ``count`` masks at their photos' sizes, in split.json's order, one at a time."""
    import cv2  # only evaluate pays for importing OpenCV here, not every reader of split.json

    for index in range(count):
        path = _photo_size_mask_path(split_dir, name, index)
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise DataError(f"{path}: missing or unreadable; rerun the split stage (dvc repro -f -s split)")
        yield mask
