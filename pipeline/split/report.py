"""The data report: what split found, repaired, skipped and how it divided the pairs.

This module holds the report's records and turns them into ``data/report.json`` (with the
headline numbers the training stage logs to its run) and a short human summary. Data that
trains but cannot be measured well is not refused but warned about, in the report's
``warnings`` and in the summary: every mask empty, every mask all foreground, a class that
no mask (or no mask of one split) holds, a validation or test split of few pairs, photos
whose EXIF orientation could not be settled.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.splits import SPLITS
from .splitting import FEW_HELD_OUT

# The repair kind of a photo whose EXIF orientation was left unapplied because the mask's shape
# cannot tell which orientation it was drawn on (samples.py).
EXIF_AMBIGUOUS = "exif_ambiguous"


@dataclass(frozen=True)
class BadSample:
    """A file (or a pair of files) that cannot be used as it is, and why."""

    reason: str  # a short code the report counts by, e.g. "unreadable", "unpaired"
    files: tuple[Path, ...]
    detail: str

    def describe(self) -> str:
        return f"{', '.join(map(str, self.files))}: {self.detail}"


@dataclass(frozen=True)
class Repair:
    """Something changed on a pair so that image and mask agree; recorded, never silent."""

    kind: str  # a short code the report counts by, e.g. "mask_resized"
    detail: str


@dataclass(frozen=True)
class PairRecord:
    """What the report needs to know about one kept pair."""

    id: str
    image: Path
    mask: Path
    width: int  # of the image as used (after EXIF orientation), before resizing
    height: int
    foreground: float  # share of mask pixels that are foreground, at data.image_size (padding not counted)
    repairs: tuple[Repair, ...] = field(default=())
    classes: tuple[int, ...] = field(default=())  # the class ids its mask holds, at data.image_size


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


# Width / height: every photo is resized to a square, so its aspect ratio says how much it is
# squeezed. The bands are symmetric (a 3:4 portrait and a 4:3 landscape are squeezed alike).
ASPECT_BANDS = (0.5, 0.7, 0.9, 1 / 0.9, 1 / 0.7, 2.0)


def _band_names() -> tuple[str, ...]:
    edges = [f"{edge:.2f}" for edge in ASPECT_BANDS]
    return (f"<{edges[0]}", *(f"{low}-{high}" for low, high in itertools.pairwise(edges)), f">={edges[-1]}")


ASPECT_BAND_NAMES = _band_names()


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _size_distribution(records: Sequence[PairRecord], image_size: int) -> dict[str, Any]:
    if not records:
        return {}
    sizes = [(record.width, record.height) for record in records]
    shorter = [min(size) for size in sizes]
    common = Counter(f"{width}x{height}" for width, height in sizes)
    bands = Counter(ASPECT_BAND_NAMES[bisect.bisect_right(ASPECT_BANDS, width / height)] for width, height in sizes)
    return {
        "width": _spread([width for width, _ in sizes]),
        "height": _spread([height for _, height in sizes]),
        "shorter_side": _spread(shorter),
        "megapixels": {key: round(value, 3) for key, value in _spread([w * h / 1e6 for w, h in sizes]).items()},
        "aspect_ratio": {band: bands[band] for band in ASPECT_BAND_NAMES},
        # data.image_size above a photo's shorter side enlarges it: more compute, no more detail.
        "shorter_than_image_size": sum(side < image_size for side in shorter),
        # Sorted by count, then by name, so the file does not depend on listing order.
        "most_common": dict(sorted(common.items(), key=lambda item: (-item[1], item[0]))[:5]),
        "distinct": len(common),
    }


def _foreground_by_split(records: Sequence[PairRecord], assignment: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    by_id = {record.id: record.foreground for record in records}
    summary = {}
    for name in SPLITS:
        values = [by_id[id_] for id_ in assignment[name]]
        summary[name] = {
            "pairs": len(values),
            "mean": round(statistics.fmean(values), 4) if values else None,
            "min": round(min(values), 4) if values else None,
            "max": round(max(values), 4) if values else None,
            "empty_masks": sum(value == 0 for value in values),
        }
    return summary


def _masks_with_class(
    records: Sequence[PairRecord], assignment: Mapping[str, Sequence[str]], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per class, in class order: how many masks of each split hold at least one of its pixels."""
    present = {record.id: set(record.classes) for record in records}
    return {
        name: {split: sum(class_id in present[id_] for id_ in assignment[split]) for split in SPLITS}
        for class_id, name in enumerate(classes)
    }


def _warnings(report: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """What makes the numbers of a training on this data mean little, each with what to check."""
    warnings = []
    holding = {name: sum(by_split.values()) for name, by_split in report["masks_with_class"].items()}
    background, foreground = classes[0], classes[1:]
    covered = set()
    if not any(holding[name] for name in foreground):
        covered |= set(foreground)
        warnings.append(
            "every mask is empty (background only): there is nothing to learn and no foreground score means anything; "
            "check that the masks mark the objects (0/255 or 0/1 for two classes, class ids or data.palette for more)"
        )
    if not holding[background]:
        covered.add(background)
        warnings.append(
            f"every mask is {' or '.join(foreground)} from edge to edge (no {background} pixel anywhere): "
            "a model that marks everything scores perfectly; check that the masks are not inverted or filled"
        )
    for name in classes:
        if name in covered:
            continue
        if not holding[name]:
            warnings.append(
                f"class {name!r} (data.classes) appears in no mask: the model cannot learn it and its scores are "
                "not measured; check the masks' values, or remove it from data.classes"
            )
            continue
        for split, count in report["masks_with_class"][name].items():
            if not count:
                effect = (
                    "the model never sees it in training"
                    if split == "train"
                    else f"its {split} score is not measured"
                    + (" and the threshold and epoch are chosen without it" if split == "val" else "")
                )
                warnings.append(f"class {name!r} appears in no {split} mask: {effect}")
    for split in ("val", "test"):
        count = report["split"][split]
        if count < FEW_HELD_OUT:
            warnings.append(
                f"{split} holds only {count} pairs: its scores are rough (one image moves a mean by up to "
                f"{1 / count:.0%}); more pairs or a larger split.{split}_fraction make them firmer"
            )
    ambiguous = report["repairs_by_kind"].get(EXIF_AMBIGUOUS, 0)
    if ambiguous:
        warnings.append(
            f"{ambiguous} photo(s) carry an EXIF rotation that their square or same-shaped masks cannot confirm: "
            "kept as stored, like their masks (listed under 'repaired' in data/report.json); if the masks were "
            "drawn on the photos as viewers show them, save those photos upright without the EXIF tag"
        )
    return warnings


def build_report(
    *,
    root: Path,
    layout: Mapping[str, str],
    policy: str,
    found: int,
    records: Sequence[PairRecord],
    bad: Sequence[BadSample],
    ignored: Sequence[Path],
    duplicates: Sequence[Sequence[str]],
    assignment: Mapping[str, Sequence[str]],
    data_hash: str,
    classes: Sequence[str],
    image_size: int,
) -> dict[str, Any]:
    """The content of ``data/report.json``: every list sorted, so unchanged data gives identical bytes."""
    split_of = {id_: name for name, ids in assignment.items() for id_ in ids}
    repaired = [record for record in records if record.repairs]
    report = {
        "root": root.as_posix(),
        "layout": dict(layout),
        "on_bad_sample": policy,
        "data_hash": data_hash,
        "pairs": {"found": found, "used": len(records), "repaired": len(repaired), "skipped": len(bad)},
        "repairs_by_kind": dict(sorted(Counter(r.kind for record in records for r in record.repairs).items())),
        "skipped_by_reason": dict(sorted(Counter(sample.reason for sample in bad).items())),
        "split": {name: len(assignment[name]) for name in SPLITS},
        "image_size": _size_distribution(records, image_size),
        "foreground_fraction": _foreground_by_split(records, assignment),
        "masks_with_class": _masks_with_class(records, assignment, classes),
        "duplicates": [
            {"ids": list(group), "split": split_of[group[0]]} for group in sorted(sorted(group) for group in duplicates)
        ],
        "repaired": [
            {
                "id": record.id,
                "image": _relative(record.image, root),
                "mask": _relative(record.mask, root),
                "repairs": [repair.detail for repair in record.repairs],
            }
            for record in sorted(repaired, key=lambda record: record.id)
        ],
        "skipped": [
            {
                "files": [_relative(path, root) for path in sample.files],
                "reason": sample.reason,
                "detail": sample.detail,
            }
            for sample in sorted(bad, key=lambda sample: (sample.files, sample.reason))
        ],
        "ignored_files": sorted(_relative(path, root) for path in ignored),
    }
    report["warnings"] = _warnings(report, classes)
    # Training logs these with its run; reading them from the file keeps this module out of its dependencies.
    report["headline"] = _headline(report)
    return report


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.items())


def format_summary(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal; ``data/report.json`` has every file by name."""
    pairs = report["pairs"]
    layout = ", ".join(value for key, value in report["layout"].items() if key != "kind")
    lines = [
        f"layout: {report['layout']['kind']} ({layout})",
        f"pairs: {pairs['found']} found, {pairs['used']} used, "
        f"{pairs['repaired']} repaired, {pairs['skipped']} skipped",
    ]
    if report["repairs_by_kind"]:
        lines.append(f"  repaired: {_counts(report['repairs_by_kind'])}")
    if report["skipped_by_reason"]:
        lines.append(f"  skipped: {_counts(report['skipped_by_reason'])}")
    if report["ignored_files"]:
        lines.append(f"  ignored {len(report['ignored_files'])} non-image file(s), e.g. {report['ignored_files'][0]}")
    sizes = report["image_size"]
    if sizes:
        lines.append(
            f"image sizes: width {sizes['width']['min']}-{sizes['width']['max']} (median {sizes['width']['median']}), "
            f"height {sizes['height']['min']}-{sizes['height']['max']} (median {sizes['height']['median']}), "
            f"{sizes['distinct']} distinct; most common {_counts(sizes['most_common'])}"
        )
        bands = {band: count for band, count in sizes["aspect_ratio"].items() if count}
        lines.append(
            f"  megapixels {sizes['megapixels']['min']}-{sizes['megapixels']['max']} "
            f"(median {sizes['megapixels']['median']}); width/height {_counts(bands)}; "
            f"{sizes['shorter_than_image_size']} enlarged (shorter side below data.image_size)"
        )
    lines.append(
        "foreground fraction: "
        + ", ".join(
            f"{name} {stats['mean']:.3f} over {stats['pairs']}"
            for name, stats in report["foreground_fraction"].items()
            if stats["pairs"]
        )
    )
    duplicates = report["duplicates"]
    if duplicates:
        shown = "; ".join(f"{' = '.join(group['ids'])} ({group['split']})" for group in duplicates[:5])
        lines.append(
            f"exact duplicate images, each group kept in one split: {shown}" + (" ..." if len(duplicates) > 5 else "")
        )
    lines.extend(f"warning: {warning}" for warning in report["warnings"])
    return "\n".join(lines)


def _headline(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers worth comparing across runs, under the names the training run tags them with."""
    headline = {f"data_pairs_{key}": float(value) for key, value in report["pairs"].items()}
    headline["data_duplicate_groups"] = float(len(report["duplicates"]))
    for name, stats in report["foreground_fraction"].items():
        if stats["mean"] is not None:
            headline[f"data_{name}_foreground"] = float(stats["mean"])
    return headline
