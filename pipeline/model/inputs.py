"""The prepared split on disk and how training reads it: arrays per split, Dataset, augmentation.

Finding, reading and repairing the raw files is the split stage's business
(``preparation.py`` and the modules it uses); training and evaluation import only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .classes import ClassSpec
from .errors import DataError
from .io import atomic_path, read_json, write_json

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")


def decode_image(data: bytes, name: str | Path) -> np.ndarray:
    """Decode to RGB uint8, whatever the file's channels (grayscale JPEGs exist in the wild)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{name}: cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class PreparedData:
    ids: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    masks: np.ndarray  # (N, S, S) uint8 class ids (0/1 for binary)
    content_hash: str


def write_split(out_dir: Path, data: PreparedData, assignment: dict[str, list[str]], classes: ClassSpec) -> None:
    position = {id_: index for index, id_ in enumerate(data.ids)}
    for name in SPLITS:
        rows = [position[id_] for id_ in assignment[name]]
        for kind, array in (("images", data.images), ("masks", data.masks)):
            with atomic_path(out_dir / name / f"{kind}.npy") as tmp, tmp.open("wb") as handle:
                np.save(handle, array[rows])
    write_json(
        out_dir / "split.json",
        {
            "data_hash": data.content_hash,
            "image_size": int(data.images.shape[1]),
            # What the mask values mean travels with them: train sizes the network from it.
            "classes": classes.to_dict(),
            "counts": {name: len(assignment[name]) for name in SPLITS},
            "ids": assignment,
        },
    )


def read_split_info(split_dir: Path) -> dict:
    return read_json(split_dir / "split.json")


def split_classes(split_info: dict) -> ClassSpec:
    return ClassSpec.from_dict(split_info["classes"])


def load_split(split_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.load(split_dir / name / "images.npy", mmap_mode="r"),
        np.load(split_dir / name / "masks.npy", mmap_mode="r"),
    )


def train_transform() -> A.Compose:
    # People stand upright, so no vertical flip; rotations and zoom stay small.
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            # Nearest neighbour for masks (albumentations' default, stated): interpolating class
            # ids would invent classes along the edges.
            A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05),
                     mask_interpolation=cv2.INTER_NEAREST, p=0.5),
            A.Normalize(),
        ]
    )


def eval_transform() -> A.Compose:
    return A.Compose([A.Normalize()])


class SegmentationDataset(Dataset):
    """(image, mask) tensors: float CHW normalised with ImageNet statistics, and 1xHxW float class ids (0/1 for binary)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, transform: A.Compose):
        if len(images) != len(masks):
            raise DataError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks, self.transform = images, masks, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Copies: the arrays are read-only memory maps shared by all loader workers.
        out = self.transform(image=np.array(self.images[index]), mask=np.array(self.masks[index]))
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].float()
        return image, mask
