"""Find image/mask pairs, read and reconcile them, split them, and serve them to training.

The split stage decodes every photo once, reconciles its mask and resizes both to
``data.image_size``; training then reads small uint8 arrays instead of decoding
full-size JPEGs every epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .io import atomic_path, read_json, write_json

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
IMAGE_DIR_NAMES = ("training_images", "images", "image", "imgs", "img")
MASK_DIR_NAMES = ("ground_truth", "masks", "mask", "labels", "label", "gt")
MASK_STEM_SUFFIXES = ("_mask", "-mask", "_label", "_gt")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    id: str
    image: Path
    mask: Path


def _find_dir(root: Path, names: Sequence[str], role: str) -> Path:
    candidates = [root, *(path for path in root.iterdir() if path.is_dir())]
    for name in names:
        found = [
            child
            for parent in candidates
            for child in parent.iterdir()
            if child.is_dir() and child.name.lower() == name
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DataError(f"{root}: several {role} folders named {name!r}: {', '.join(map(str, found))}")
    raise DataError(f"{root}: no {role} folder found (looked for folders named {', '.join(names)})")


def _images_by_stem(folder: Path, strip_suffixes: Sequence[str] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem
        for suffix in strip_suffixes:
            stem = stem.removesuffix(suffix)
        if stem in found:
            raise DataError(f"{folder}: two files share the name {stem!r}: {found[stem].name} and {path.name}")
        found[stem] = path
    return found


def find_pairs(root: str | Path) -> list[Pair]:
    """Pair every image with its mask by file stem; any unpaired file is an error naming it."""
    root = Path(root)
    images = _images_by_stem(_find_dir(root, IMAGE_DIR_NAMES, "image"))
    masks = _images_by_stem(_find_dir(root, MASK_DIR_NAMES, "mask"), MASK_STEM_SUFFIXES)
    problems = [f"image without mask: {images[stem]}" for stem in sorted(images.keys() - masks.keys())]
    problems += [f"mask without image: {masks[stem]}" for stem in sorted(masks.keys() - images.keys())]
    if problems:
        raise DataError(f"{root}: {len(problems)} unpaired file(s):\n  " + "\n  ".join(problems))
    if not images:
        raise DataError(f"{root}: no images found")
    return [Pair(stem, images[stem], masks[stem]) for stem in sorted(images)]


def decode_image(data: bytes, name: str | Path) -> np.ndarray:
    """Decode to RGB uint8, whatever the file's channels (grayscale JPEGs exist in the wild)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{name}: cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, name: str | Path) -> np.ndarray:
    """Decode a binary mask (0/255 or 0/1) to a 0/1 uint8 array."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"{name}: cannot be decoded as a mask")
    return (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)


def reconcile_mask(mask: np.ndarray, image_shape: tuple[int, ...], name: str | Path) -> np.ndarray:
    """Bring ``mask`` to the image's size when it is the same picture at another scale."""
    height, width = image_shape[:2]
    if mask.shape == (height, width):
        return mask
    mask_height, mask_width = mask.shape
    # Same picture at another scale: the mask's sides match the image's aspect ratio up to
    # the one pixel that rounding its size can cost.
    if abs(mask_height - height * mask_width / width) > 1 and abs(mask_width - width * mask_height / height) > 1:
        raise DataError(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
            "the aspect ratios differ, so the mask cannot be rescaled to fit"
        )
    # Nearest neighbour keeps the mask binary.
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


@dataclass
class PreparedData:
    ids: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    masks: np.ndarray  # (N, S, S) uint8 in {0, 1}
    content_hash: str


def prepare(pairs: Sequence[Pair], image_size: int) -> PreparedData:
    """Decode, reconcile and resize every pair; hash the raw bytes for provenance."""
    resize = A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)])
    images = np.empty((len(pairs), image_size, image_size, 3), np.uint8)
    masks = np.empty((len(pairs), image_size, image_size), np.uint8)
    content = hashlib.sha256()
    for index, pair in enumerate(tqdm(pairs, desc="prepare", unit="pair")):
        image_bytes, mask_bytes = pair.image.read_bytes(), pair.mask.read_bytes()
        content.update(f"{pair.id}\0".encode())
        content.update(hashlib.sha256(image_bytes).digest())
        content.update(hashlib.sha256(mask_bytes).digest())
        image = decode_image(image_bytes, pair.image)
        mask = reconcile_mask(decode_mask(mask_bytes, pair.mask), image.shape, pair.mask)
        resized = resize(image=image, mask=mask)
        images[index], masks[index] = resized["image"], resized["mask"]
    return PreparedData([pair.id for pair in pairs], images, masks, content.hexdigest())


def split_ids(ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded, disjoint train/val/test partition, independent of the order ``ids`` come in."""
    ordered = sorted(ids)
    count = len(ordered)
    n_test = max(1, round(count * test_fraction))
    n_val = max(1, round(count * val_fraction))
    if count - n_test - n_val < 1:
        raise DataError(f"only {count} pairs: too few for a train/val/test split with these fractions")
    order = np.random.default_rng(seed).permutation(count)
    shuffled = [ordered[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def write_split(out_dir: Path, data: PreparedData, assignment: dict[str, list[str]]) -> None:
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
            "counts": {name: len(assignment[name]) for name in SPLITS},
            "ids": assignment,
        },
    )


def read_split_info(split_dir: Path) -> dict:
    return read_json(split_dir / "split.json")


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
            A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05), p=0.5),
            A.Normalize(),
        ]
    )


def eval_transform() -> A.Compose:
    return A.Compose([A.Normalize()])


class SegmentationDataset(Dataset):
    """(image, mask) tensors: float CHW normalised with ImageNet statistics, and 1xHxW float 0/1."""

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
