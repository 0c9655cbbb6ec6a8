"""What the network is fed: images normalised with ImageNet statistics, as tensors.

Augmentation is training's business (``pipeline/train/augmentation.py``); evaluation and
predict use only the normalisation here.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.errors import DataError


def eval_transform() -> A.Compose:
    return A.Compose([A.Normalize()])


class SegmentationDataset(Dataset):
    """(image, mask) tensors: float CHW normalised with ImageNet statistics, and 1xHxW float class ids
    (0/1 for binary)."""

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
