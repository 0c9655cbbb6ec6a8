"""The split stage's work: find pairs, read and repair them, apply the bad-sample policy,
split, and write ``data/split/`` with its ``data/report.json``.

Every photo is decoded once here and resized to ``data.image_size`` as ``data.resize`` says
(``core/resizing.py``), padded to the square; training then reads small uint8 arrays instead
of decoding full-size files every epoch. The resized pairs wait on disk (``StagedRows``) until
the split is drawn, so memory does not grow with the dataset. The test masks are also kept at
each photo's own size, where evaluate scores the test predictions.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..core.classes import ClassSpec
from ..core.config import DataConfig, SplitConfig
from ..core.errors import DataError
from ..core.files import atomic_dir, write_json
from ..core.resizing import at_network_scale, pad_to
from ..core.splits import SPLITS, SplitInfo, StagedRows, write_photo_size_mask, write_split
from .layouts import Pair, find_inventory
from .report import BadSample, PairRecord, build_report
from .samples import read_fitted_mask, read_pair
from .splitting import check_split_sizes, split_pairs, unit_count


@dataclass
class Preparation:
    records: list[PairRecord]  # the kept pairs, in the order of their rows
    bad: list[BadSample]
    duplicates: list[list[str]]  # ids of pairs whose decoded images are identical
    content_hash: str


def prepare(pairs: Sequence[Pair], image_size: int, classes: ClassSpec, resize: str, rows: StagedRows) -> Preparation:
    """Read, repair and resize every pair into ``rows``; hash the kept files' bytes for provenance."""
    records, bad = [], []
    by_content: dict[str, list[str]] = defaultdict(list)
    content = hashlib.sha256()
    for pair in tqdm(sorted(pairs, key=lambda pair: pair.id), desc="prepare", unit="pair"):
        image_bytes, mask_bytes = pair.image.read_bytes(), pair.mask.read_bytes()
        sample = read_pair(pair, image_bytes, mask_bytes, classes)
        if isinstance(sample, BadSample):
            bad.append(sample)
            continue
        content.update(f"{pair.id}\0".encode())
        content.update(hashlib.sha256(image_bytes).digest())
        content.update(hashlib.sha256(mask_bytes).digest())
        # Duplicates are judged on decoded pixels: the same photo saved twice is not byte-identical.
        decoded = hashlib.sha256(f"{sample.image.shape}".encode() + sample.image.tobytes()).hexdigest()
        by_content[decoded].append(pair.id)
        # At the network's scale, then padded to the square (both only resize under squash).
        image = at_network_scale(sample.image, image_size, resize)
        mask = at_network_scale(sample.mask, image_size, resize, mask=True)
        rows.append(pad_to(image, (image_size, image_size)), pad_to(mask, (image_size, image_size)))
        height, width = sample.image.shape[:2]
        # Of the photo's content at the network's scale, as training sees it (the padding mirrors it).
        foreground = float((mask > 0).mean())
        present = tuple(int(class_id) for class_id in np.unique(mask))
        records.append(
            PairRecord(pair.id, pair.image, pair.mask, width, height, foreground, tuple(sample.repairs), present)
        )
    duplicates = sorted(ids for ids in by_content.values() if len(ids) > 1)
    return Preparation(records, bad, duplicates, content.hexdigest())


def write_photo_size_masks(
    split_dir: Path, records: Sequence[PairRecord], ids: Sequence[str], classes: ClassSpec
) -> None:
    """The repaired masks of the test pairs ``ids`` at their photos' own sizes, read again one at a
    time: the split is drawn after every pair was read, and keeping every full-size mask until then
    would make memory grow with the dataset."""
    by_id = {record.id: record for record in records}
    for index, id_ in enumerate(ids):
        record = by_id[id_]
        mask = read_fitted_mask(record.mask, classes, (record.height, record.width))
        if isinstance(mask, BadSample):
            raise DataError(f"{mask.describe()} (the file changed while the split stage was reading it)")
        write_photo_size_mask(split_dir, "test", index, mask)


def check_policy(bad: Sequence[BadSample], policy: str) -> None:
    """``data.on_bad_sample: error`` stops here, naming every bad file at once."""
    if policy == "error" and bad:
        listed = "\n  ".join(sample.describe() for sample in bad)
        raise DataError(
            f"{len(bad)} bad sample(s):\n  {listed}\n"
            "Fix or remove them, or set data.on_bad_sample: skip to leave them out "
            "(they are then listed in data/report.json)."
        )


def draw_split(
    raw_dir: Path, prepared: Preparation, bad: Sequence[BadSample], policy: str, split_cfg: SplitConfig
) -> dict[str, list[str]]:
    """The ids of each split of the kept pairs, once the bad-sample policy and the split sizes allow one."""
    check_policy(bad, policy)
    if not prepared.records:
        raise DataError(f"{raw_dir}: no usable image/mask pairs found")
    foreground = {record.id: record.foreground for record in prepared.records}
    check_split_sizes(unit_count(foreground, prepared.duplicates), split_cfg.val_fraction, split_cfg.test_fraction)
    return split_pairs(
        foreground,
        prepared.duplicates,
        val_fraction=split_cfg.val_fraction,
        test_fraction=split_cfg.test_fraction,
        seed=split_cfg.seed,
        data_hash=prepared.content_hash,
    )


def build_split(
    raw_dir: Path, split_dir: Path, report_path: Path, data_cfg: DataConfig, split_cfg: SplitConfig
) -> dict[str, Any]:
    """Everything the split stage does; returns the report it wrote."""
    inventory = find_inventory(raw_dir, data_cfg.layout)
    classes = data_cfg.class_spec()
    # Built aside and swapped in whole, like data/raw: a crash, or a refusal below, leaves the old split.
    with atomic_dir(split_dir) as staging:
        with StagedRows(staging, data_cfg.image_size) as rows:
            prepared = prepare(inventory.pairs, data_cfg.image_size, classes, data_cfg.resize, rows)
            bad = inventory.bad + prepared.bad
            assignment = draw_split(raw_dir, prepared, bad, data_cfg.on_bad_sample, split_cfg)
            photo_shape = {record.id: (record.height, record.width) for record in prepared.records}
            info = SplitInfo(
                data_hash=prepared.content_hash,
                image_size=data_cfg.image_size,
                classes=classes,
                counts={name: len(assignment[name]) for name in SPLITS},
                ids=assignment,
                resize=data_cfg.resize,
                photo_shapes={name: [photo_shape[id_] for id_ in assignment[name]] for name in SPLITS},
            )
            write_split(staging, [record.id for record in prepared.records], rows, info)
        write_photo_size_masks(staging, prepared.records, assignment["test"], classes)
    report = build_report(
        root=raw_dir,
        layout=inventory.layout,
        policy=data_cfg.on_bad_sample,
        found=inventory.found,
        records=prepared.records,
        bad=bad,
        ignored=inventory.ignored,
        duplicates=prepared.duplicates,
        assignment=assignment,
        data_hash=prepared.content_hash,
        classes=classes.names,
        image_size=data_cfg.image_size,
    )
    write_json(report_path, report)
    return report
