"""The prepared split on disk: the split stage writes it, training and evaluation read it.

``data/split/<name>/images.npy`` and ``masks.npy`` per split, and ``split.json``, which
``SplitInfo`` reads and writes: the data's content hash, the size the images were resized
to and how (``data.resize``), the classes the mask values stand for, which pair ids went
where and the size of each one's photo. The test split also
keeps its repaired masks at each photo's own size (``PHOTO_SIZE_MASKS``): its headline scores
are taken at the size ``predict`` delivers masks at.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .classes import ClassSpec
from .errors import DataError
from .files import atomic_path, read_json, write_json, write_png
from .resizing import content_shape, resize_mode

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
    resize: str  # data.resize
    # (height, width) of each pair's photo, in the order of ``ids``: where the padding of a
    # ``longest`` split begins, which no score counts.
    photo_shapes: dict[str, list[tuple[int, int]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_hash": self.data_hash,
            "image_size": self.image_size,
            "resize": self.resize,
            "classes": self.classes.to_dict(),
            "counts": self.counts,
            "ids": self.ids,
            "photo_shapes": {name: [list(shape) for shape in shapes] for name, shapes in self.photo_shapes.items()},
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
            resize_mode(saved.get("resize"), str(split_dir / INFO_FILE), DataError),
            {
                name: [(int(height), int(width)) for height, width in shapes]
                for name, shapes in saved["photo_shapes"].items()
            },
        )

    def content_shapes(self, name: str) -> list[tuple[int, int]]:
        """The (height, width) of split ``name``'s images at the top left of their S x S arrays;
        the rest is padding."""
        return [content_shape(shape, self.image_size, self.resize) for shape in self.photo_shapes[name]]


class StagedRows:
    """The resized images and masks of a split being built, appended one pair at a time to two
    files in ``folder`` and removed on leaving the ``with`` block: writing the split copies them
    from there row by row, so memory does not grow with the dataset."""

    def __init__(self, folder: Path, image_size: int):
        self.shapes = {"images": (image_size, image_size, 3), "masks": (image_size, image_size)}
        self._paths = {kind: folder / f".{kind}.rows" for kind in self.shapes}
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> StagedRows:
        self._files = {kind: path.open("w+b") for kind, path in self._paths.items()}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for kind, handle in self._files.items():
            handle.close()
            self._paths[kind].unlink()

    def append(self, image: np.ndarray, mask: np.ndarray) -> None:
        for kind, array in (("images", image), ("masks", mask)):
            if array.shape != self.shapes[kind] or array.dtype != np.uint8:
                raise ValueError(f"{kind} row of {array.dtype} {array.shape}; expected uint8 {self.shapes[kind]}")
            self._files[kind].write(np.ascontiguousarray(array).data)

    def copy(self, kind: str, rows: list[int], handle: BinaryIO) -> None:
        """Rows ``rows`` of ``kind``, in that order, as one ``.npy`` file (the bytes ``np.save`` writes)."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (len(rows), *self.shapes[kind])})
        source = self._files[kind]
        source.flush()
        size = math.prod(self.shapes[kind])
        for row in rows:
            handle.write(os.pread(source.fileno(), size, row * size))


def write_split(out_dir: Path, ids: list[str], rows: StagedRows, info: SplitInfo) -> None:
    """Each split's ``images.npy`` (N x S x S x 3) and ``masks.npy`` (N x S x S) from ``rows``, whose
    row i is pair ``ids[i]``; then ``split.json``."""
    position = {id_: index for index, id_ in enumerate(ids)}
    for name in SPLITS:
        chosen = [position[id_] for id_ in info.ids[name]]
        for kind in rows.shapes:
            with atomic_path(out_dir / name / f"{kind}.npy") as tmp, tmp.open("wb") as handle:
                rows.copy(kind, chosen, handle)
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
