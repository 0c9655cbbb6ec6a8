"""Evaluate keeps counts of the test split, not arrays: what it holds does not grow with the images."""

from __future__ import annotations

import gc
import types
from pathlib import Path

import numpy as np
import torch

from pipeline.core import paths
from pipeline.core.classes import PERSON
from pipeline.core.splits import SPLITS, SplitInfo, StagedRows, write_photo_size_mask, write_split
from pipeline.evaluate.evaluation import score_test
from pipeline.evaluate.predictions import load_for_evaluation
from pipeline.serve.settings import InferenceSettings
from tests.helpers.modelstore import tiny_checkpoint

SIZE = 32
# Walking into these would reach every module's globals, which no scorer owns.
NOT_HELD = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def held_bytes(root: object) -> int:
    """The bytes of every tensor storage and array buffer reachable from ``root``, each counted once."""
    seen: set[int] = set()
    buffers: dict[int, int] = {}
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, NOT_HELD):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            buffers[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, np.ndarray) and item.base is not None:
            stack.append(item.base)
        elif isinstance(item, np.ndarray):
            buffers[item.ctypes.data] = item.nbytes
        else:
            stack.extend(gc.get_referents(item))
    return sum(buffers.values())


def write_test_split(root: Path, images: int) -> SplitInfo:
    """A split of ``images`` random test photos and masks, the photo-size masks at the input size."""
    rng = np.random.default_rng(images)
    ids = [f"photo{index}" for index in range(images)]
    photos = rng.integers(0, 256, (images, SIZE, SIZE, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (images, SIZE, SIZE), dtype=np.uint8)
    split_ids = {name: ids if name == "test" else [] for name in SPLITS}
    counts = {name: len(split) for name, split in split_ids.items()}
    shapes = {name: [(SIZE, SIZE)] * len(split) for name, split in split_ids.items()}
    info = SplitInfo("0" * 64, SIZE, PERSON, counts, split_ids, "squash", shapes)
    (root / paths.SPLIT_DIR).mkdir(parents=True)
    with StagedRows(root / paths.SPLIT_DIR, SIZE) as rows:
        for photo, mask in zip(photos, masks, strict=True):
            rows.append(photo, mask)
        write_split(root / paths.SPLIT_DIR, ids, rows, info)
    for index, mask in enumerate(masks):
        write_photo_size_mask(root / paths.SPLIT_DIR, "test", index, mask)
    return info


def test_what_evaluate_keeps_of_the_test_split_does_not_grow_with_its_images(tmp_path, monkeypatch):
    model, loss_fn, device = load_for_evaluation(tiny_checkpoint(tmp_path / "best.pt", image_size=SIZE))
    settings = InferenceSettings(0.5, False, "")
    held = {}
    # From 8 images on, the gallery keeps its full CASES_EACH worst and best: a constant.
    for images in (8, 32):
        root = tmp_path / f"{images}-images"
        info = write_test_split(root, images)
        monkeypatch.chdir(root)
        scored = score_test(model, loss_fn, device, settings, info)
        assert scored.export.images == len(scored.at_photo_size.per_image()) == images  # all went through
        held[images] = held_bytes(scored)
    # An image's logits and mask are 8 bytes a pixel; what is kept of it is its counts, a few dozen bytes.
    assert (held[32] - held[8]) / 24 < SIZE * SIZE / 4, held
