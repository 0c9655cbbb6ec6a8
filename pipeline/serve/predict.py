"""`python -m pipeline predict`: masks (and overlays) for image files, folders or globs."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.classes import ClassSpec
from ..core.errors import DataError
from ..core.files import write_png
from ..core.images import IMAGE_SUFFIXES, decode_image
from .palette import overlay_colours
from .predictor import Predictor, image_batches, load_predictor


def expand_inputs(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, folders searched recursively for images, and glob patterns expanded."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            yield path
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"{item}: no such file, folder or matching glob")
            yield from (Path(match) for match in matches)


def overlay(image: np.ndarray, classes_map: np.ndarray, classes: ClassSpec) -> np.ndarray:
    """The photo with each foreground class blended half and half with its colour."""
    blended = image.astype(np.float32)
    for class_id, colour in enumerate(overlay_colours(classes), start=1):
        where = classes_map == class_id
        blended[where] = 0.5 * blended[where] + 0.5 * np.array(colour, np.float32)
    return blended.astype(np.uint8)


def _output_names(stem: str, with_overlay: bool, used: set[str]) -> tuple[str, ...]:
    """``<stem>.png`` (and ``<stem>_overlay.png``), with ``_`` added to the stem until no earlier
    output has either name: the same stem in two folders, or ``x.jpg`` beside ``x_overlay.jpg``."""
    while True:
        names = (f"{stem}.png", f"{stem}_overlay.png") if with_overlay else (f"{stem}.png",)
        if used.isdisjoint(names):
            used.update(names)
            return names
        stem += "_"


def predict_files(
    predictor: Predictor, files: list[Path], out_dir: Path, *, batch_size: int = 8, with_overlay: bool = False
) -> tuple[list[Path], list[str]]:
    """Write ``<stem>.png`` masks (original size; 0/255 for binary, class ids otherwise) into ``out_dir``;
    bad files are reported, not fatal: the others still get their masks."""
    written: list[Path] = []
    failures: list[str] = []
    used: set[str] = set()
    progress = tqdm(total=len(files), desc="predict", unit="image")

    def decoded() -> Iterator[tuple[Path, np.ndarray]]:
        for path in files:
            try:
                yield path, decode_image(path.read_bytes(), path)
            except (DataError, OSError) as exc:
                failures.append(f"{path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
                progress.update(1)

    for batch in image_batches(decoded(), batch_size):
        for (path, image), classes_map in zip(batch, predictor.class_maps([image for _, image in batch]), strict=True):
            names = _output_names(path.stem, with_overlay, used)
            write_png(out_dir / names[0], predictor.mask_values(classes_map))
            if with_overlay:
                write_png(out_dir / names[1], overlay(image, classes_map, predictor.classes))
            written.append(out_dir / names[0])
            progress.update(1)
    progress.close()
    return written, failures


def run(
    inputs: list[str],
    model_ref: str,
    out_dir: Path,
    *,
    threshold: float | None,
    batch_size: int,
    with_overlay: bool,
    device: str,
) -> int:
    files = list(expand_inputs(inputs))
    if not files:
        raise DataError(f"no images found in {' '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"--out {out_dir}: cannot create the folder ({exc.strerror}); choose another") from None
    predictor = load_predictor(model_ref, threshold=threshold, device=device)
    written, failures = predict_files(predictor, files, out_dir, batch_size=batch_size, with_overlay=with_overlay)
    rule = (
        f"threshold {predictor.threshold:g}" if predictor.classes.binary else f"top class of {predictor.classes.count}"
    )
    print(f"predict: wrote {len(written)} mask(s) to {out_dir} ({rule}{', flip TTA' if predictor.tta else ''})")
    for failure in failures:
        print(f"predict: skipped {failure}")
    return 1 if failures else 0
