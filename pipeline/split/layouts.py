"""Find the image/mask pairs in a fetched dataset, whatever its layout.

Each layout is a ``Layout`` subclass with ``detect`` (is this dataset laid out so, and how
exactly) and ``read`` (its pairs), registered in ``LAYOUTS`` by ``@register_layout`` under the
name ``data.layout`` uses, with the arguments it takes; ``core/config.py`` checks a
``data.layout`` value against it at start-up (``layout_problem``). Two layouts are understood:
a CSV file listing image and mask paths (the reference dataset's ``train.csv``), and two
folders whose files pair up by name. ``data.layout`` picks one when a dataset could be read
either way: ``auto`` (each layout in the order registered: a pair CSV if there is exactly one,
else the folders), ``csv`` / ``csv:<file>``, ``folders`` / ``folders:<images folder>,<masks
folder>`` (paths relative to the dataset root). Problems that concern pairing (unpaired files,
two files with one name, a CSV row pointing nowhere) are returned as ``BadSample`` records,
never dropped silently.
"""

from __future__ import annotations

import csv
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

from ..core.errors import DataError
from ..core.extensions import AUTO, Registry
from ..core.images import IMAGE_SUFFIXES
from .report import BadSample

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "training_images", "train_images", "jpegimages", "photos")
MASK_DIR_NAMES = (
    "masks",
    "mask",
    "labels",
    "label",
    "ground_truth",
    "groundtruth",
    "gt",
    "annotations",
    "segmentations",
)
MASK_STEM_SUFFIXES = ("_mask", "-mask", "_masks", "_label", "-label", "_gt", "_seg", "_segmentation")
# CSV headers are compared with case, spaces, dashes and underscores removed.
IMAGE_COLUMNS = frozenset({"image", "images", "img", "imgs", "imagepath", "imagefile", "imgpath", "photo"})
MASK_COLUMNS = frozenset(
    {"mask", "masks", "maskpath", "maskfile", "label", "labels", "gt", "groundtruth", "annotation"}
)
# Folders are looked for this deep below the root: datasets often wrap them in one more folder.
SEARCH_DEPTH = 2


@dataclass(frozen=True)
class Pair:
    id: str
    image: Path
    mask: Path


@dataclass
class Inventory:
    """Everything found under a dataset root: usable pairs, bad samples, files that are no images."""

    layout: dict[str, str]
    pairs: list[Pair] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    @property
    def found(self) -> int:
        """Pairs found, usable or not: each bad record stands for one would-be pair."""
        return len(self.pairs) + len(self.bad)


def _folders(root: Path) -> list[Path]:
    found, level = [], [root]
    for _ in range(SEARCH_DEPTH):
        level = sorted(child for parent in level for child in parent.iterdir() if child.is_dir())
        found += level
    return found


def _named(folders: Iterable[Path], names: Sequence[str]) -> list[Path]:
    return [folder for folder in folders if folder.name.lower() in names]


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _image_files(folder: Path, inventory: Inventory) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            inventory.ignored.append(path)
    return files


def _group_by_key(paths: Iterable[Path], key) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[key(path)].append(path)
    return groups


def _unique(groups: dict[str, list[Path]], role: str, inventory: Inventory) -> dict[str, Path]:
    """Keep the keys with one file; two files answering to one name are both bad (which one is meant?)."""
    unique = {}
    for key, paths in sorted(groups.items()):
        if len(paths) == 1:
            unique[key] = paths[0]
        else:
            inventory.bad.append(
                BadSample("duplicate_stem", tuple(paths), f"{len(paths)} {role} files share the name {key!r}")
            )
    return unique


def _mask_key(image_stems: set[str]):
    def key(path: Path) -> str:
        # A mask named like its image wins over suffix stripping ("a_gt.png" for "a_gt.jpg").
        if path.stem in image_stems:
            return path.stem
        for suffix in MASK_STEM_SUFFIXES:
            if path.stem.lower().endswith(suffix):
                return path.stem[: -len(suffix)]
        return path.stem

    return key


def from_folders(root: Path, image_dir: Path, mask_dir: Path) -> Inventory:
    inventory = Inventory({"kind": "folders", "images": _relative(image_dir, root), "masks": _relative(mask_dir, root)})
    image_groups = _group_by_key(_image_files(image_dir, inventory), lambda path: path.stem)
    mask_groups = _group_by_key(_image_files(mask_dir, inventory), _mask_key(set(image_groups)))
    images = _unique(image_groups, "image", inventory)
    masks = _unique(mask_groups, "mask", inventory)
    # A name already reported as a duplicate on one side is not unpaired on the other.
    duplicated = (image_groups.keys() - images.keys()) | (mask_groups.keys() - masks.keys())
    for stem in sorted(images.keys() - masks.keys() - duplicated):
        inventory.bad.append(BadSample("unpaired", (images[stem],), "image has no mask"))
    for stem in sorted(masks.keys() - images.keys() - duplicated):
        inventory.bad.append(BadSample("unpaired", (masks[stem],), "mask has no image"))
    inventory.pairs = [Pair(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]
    return inventory


def _normalise(header: str) -> str:
    return re.sub(r"[\s_\-]", "", header.lower())


def _pair_columns(header: Sequence[str]) -> tuple[int, int] | None:
    names = [_normalise(name) for name in header]
    images = [index for index, name in enumerate(names) if name in IMAGE_COLUMNS]
    masks = [index for index, name in enumerate(names) if name in MASK_COLUMNS]
    return (images[0], masks[0]) if len(images) == 1 and len(masks) == 1 else None


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None


def pair_csvs(root: Path) -> list[Path]:
    """CSV files (at most SEARCH_DEPTH deep) whose header names one image and one mask column."""
    candidates = sorted(path for folder in [root, *_folders(root)] for path in folder.glob("*.csv"))
    return [path for path in candidates if (rows := _read_rows(path)) and _pair_columns(rows[0])]


def _files_by_name(root: Path) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            parts = path.relative_to(root).parts
            index[parts[-1]].append(parts)
    return index


def _common_tail(a: Sequence[str], b: Sequence[str]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[-1 - count] == b[-1 - count]:
        count += 1
    return count


def _resolve_listed(entry: str, root: Path, files: dict[str, list[tuple[str, ...]]]) -> Path | str:
    """The file under ``root`` that a CSV entry means, or why there is none.

    Listed paths often carry a prefix that no longer exists (the reference CSV says
    ``Human-Segmentation-Dataset-master/...`` while the archive's folder is
    ``...-master-master/``), or are absolute paths from the author's machine. So the entry
    is matched against the files actually present: same name, and the longest run of
    trailing folders in common. Only files inside ``root`` are candidates.
    """
    parts = PurePosixPath(entry.strip().replace("\\", "/")).parts
    if not parts:
        return "is empty"
    if ".." in parts:
        return "leaves the dataset folder"
    candidates = files.get(parts[-1], [])
    if not candidates:
        return "not found"
    best = max(_common_tail(parts, candidate) for candidate in candidates)
    tied = [candidate for candidate in candidates if _common_tail(parts, candidate) == best]
    if len(tied) > 1:
        return f"matches several files ({', '.join('/'.join(candidate) for candidate in tied)})"
    return root.joinpath(*tied[0])


def from_csv(root: Path, csv_path: Path) -> Inventory:
    rows = _read_rows(csv_path)
    columns = _pair_columns(rows[0]) if rows else None
    if columns is None:
        raise DataError(
            f"{csv_path}: the header must name one image column ({', '.join(sorted(IMAGE_COLUMNS))}) "
            f"and one mask column ({', '.join(sorted(MASK_COLUMNS))})"
        )
    inventory = Inventory({"kind": "csv", "csv": _relative(csv_path, root)})
    files = _files_by_name(root)
    listed: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        entries = [row[index] if index < len(row) else "" for index in columns]
        resolved = [_resolve_listed(entry, root, files) for entry in entries]
        problems = [
            f"{role} {entry!r} {found}"
            for role, entry, found in zip(("image", "mask"), entries, resolved, strict=True)
            if isinstance(found, str)
        ]
        if problems:
            inventory.bad.append(BadSample("missing_file", (csv_path,), f"line {line}: {'; '.join(problems)}"))
            continue
        image, mask = resolved
        listed[image.stem].append((image, mask))
    for stem, pairs in sorted(listed.items()):
        if len(pairs) == 1:
            inventory.pairs.append(Pair(stem, *pairs[0]))
        else:
            files = tuple(sorted({path for pair in pairs for path in pair}))
            inventory.bad.append(
                BadSample("duplicate_stem", files, f"{csv_path.name} lists {len(pairs)} pairs named {stem!r}")
            )
    return inventory


class NotFound(DataError):
    """A layout's ``detect`` found no reading of the dataset; ``auto`` then tries the next layout."""


class Layout(ABC):
    """One way a dataset can list its pairs; ``data.layout`` names it, alone or with its arguments."""

    name: ClassVar[str]
    # What each argument of `<name>:<first>,<second>` is (paths relative to the dataset's top folder).
    arguments: ClassVar[tuple[str, ...]]

    @property
    def usage(self) -> str:
        """The data.layout value that names this reading explicitly, e.g. ``folders:<images folder>,<masks folder>``."""
        return f"{self.name}:" + ",".join(f"<{argument}>" for argument in self.arguments)

    @abstractmethod
    def detect(self, root: Path) -> tuple[Path, ...]:
        """The arguments (paths under ``root``) of the one reading of ``root`` in this layout.
        Raises NotFound when there is none, DataError when there are several."""

    @abstractmethod
    def read(self, root: Path, arguments: tuple[Path, ...]) -> Inventory:
        """The pairs, and the pairing problems, of ``root`` read with ``arguments``."""


# data.layout names -> layouts, in the order `auto` tries them.
LAYOUTS: Registry[Layout] = Registry("data.layout")


def register_layout(layout: type[Layout]) -> type[Layout]:
    """Class decorator: ``data.layout`` accepts the layout's name, alone or with its arguments;
    ``auto`` tries the layouts in the order they register (earlier wins)."""
    LAYOUTS.register(layout.name, layout())
    return layout


def layout_problem(value: str) -> str | None:
    """Why ``value`` is no data.layout value (auto, a layout's name, or its name with all its
    arguments); None when it is one."""
    name, colon, argument = value.partition(":")
    if name in LAYOUTS:
        layout = LAYOUTS[name]
        if not colon or (len(parts := argument.split(",")) == len(layout.arguments) and all(parts)):
            return None
        return f"{name} takes {len(layout.arguments)} argument(s): {layout.usage}, or none"
    if value == AUTO:
        return None
    forms = [AUTO, *(form for layout in LAYOUTS.values() for form in (layout.name, layout.usage))]
    return f"unknown layout; use one of: {', '.join(forms)}"


@register_layout
class CsvLayout(Layout):
    name = "csv"
    arguments = ("file",)

    def detect(self, root: Path) -> tuple[Path, ...]:
        csvs = pair_csvs(root)
        if len(csvs) > 1:
            listed = ", ".join(_relative(path, root) for path in csvs)
            raise DataError(
                f"{root}: several CSV files list image/mask pairs ({listed}); choose one with data.layout: {self.usage}"
            )
        if not csvs:
            raise NotFound(f"{root}: data.layout is csv but no CSV file names an image and a mask column")
        return (csvs[0],)

    def read(self, root: Path, arguments: tuple[Path, ...]) -> Inventory:
        return from_csv(root, *arguments)


@register_layout
class FoldersLayout(Layout):
    name = "folders"
    arguments = ("images folder", "masks folder")

    def detect(self, root: Path) -> tuple[Path, ...]:
        folders = _folders(root)
        images, masks = _named(folders, IMAGE_DIR_NAMES), _named(folders, MASK_DIR_NAMES)
        if not images or not masks:
            role, names = ("image", IMAGE_DIR_NAMES) if not images else ("mask", MASK_DIR_NAMES)
            raise NotFound(
                f"{root}: no {role} folder found (looked for a pair CSV and for folders named {', '.join(names)}); "
                f"set data.layout to {self.usage} or {LAYOUTS['csv'].usage}"
            )
        if len(images) > 1 or len(masks) > 1:
            listed = ", ".join(_relative(folder, root) for folder in images + masks)
            raise DataError(
                f"{root}: several candidate image/mask folders ({listed}); choose with data.layout: {self.usage}"
            )
        return images[0], masks[0]

    def read(self, root: Path, arguments: tuple[Path, ...]) -> Inventory:
        return from_folders(root, *arguments)


def _inside(root: Path, relative: str, layout: Layout) -> Path:
    path = root / relative.strip()
    if ".." in PurePosixPath(relative).parts or not path.exists():
        raise DataError(
            f"data.layout: {relative!r} is not a path inside the dataset root {root} (expected {layout.usage})"
        )
    return path


def find_inventory(root: str | Path, layout: str) -> Inventory:
    """Pairs and pairing problems under ``root`` read with ``layout`` (a ``data.layout`` value)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist (run the fetch stage first)")
    name, _, argument = layout.partition(":")
    if argument:
        chosen = LAYOUTS[name]
        return chosen.read(root, tuple(_inside(root, part, chosen) for part in argument.split(",")))
    *earlier, last = LAYOUTS.values() if name == AUTO else [LAYOUTS[name]]
    for candidate in earlier:
        try:
            arguments = candidate.detect(root)
        except NotFound:
            continue
        return candidate.read(root, arguments)
    # The last one's NotFound (a DataError) says what was looked for and how to choose.
    return last.read(root, last.detect(root))
