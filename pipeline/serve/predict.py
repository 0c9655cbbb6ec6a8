"""`python -m pipeline predict`: masks (and overlays, soft masks) for image files, folders or globs."""

from __future__ import annotations

import glob
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.classes import ClassSpec
from ..core.errors import DataError, ModelError
from ..core.files import sha256_file, write_png
from ..core.images import IMAGE_SUFFIXES, decode_image
from ..core.paths import ONNX_MODEL
from .onnx_backend import ONNX_ARTIFACT, OnnxSegmenter
from .palette import overlay_colours
from .registered import registered_artifacts
from .segmenter import Segmenter, class_map, image_batches, soft_mask_suffixes, soft_masks

# The faster one on CPU (docs/performance.md), used whenever the model has an ONNX export.
DEFAULT_BACKEND = "onnxruntime"


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


def _output_names(stem: str, suffixes: list[str], used: set[str]) -> dict[str, str]:
    """``<stem><suffix>.png`` by suffix (``""`` the mask, ``_overlay``, soft masks), with ``_``
    added to the stem until no earlier output has any of these names: the same stem in two
    folders, or ``x.jpg`` beside ``x_overlay.jpg`` or ``x_probability.jpg``."""
    while True:
        names = {suffix: f"{stem}{suffix}.png" for suffix in suffixes}
        if used.isdisjoint(names.values()):
            used.update(names.values())
            return names
        stem += "_"


def _no_onnx(message: str, required: bool) -> None:
    if required:
        raise ModelError(f"{message}; or use --backend torch")
    print(f"predict: {message}; using PyTorch")


def _onnx_segmenter(model_ref: str, device: str, *, required: bool) -> OnnxSegmenter | None:
    """The ONNX export of ``model_ref``: the file itself, the registered version's artifact, or the
    one evaluate wrote beside a checkpoint (only if exported from that very checkpoint)."""
    if model_ref.startswith(("models:/", "runs:/")):
        with tempfile.TemporaryDirectory(prefix="unet-predict-") as tmp:
            path = registered_artifacts(model_ref, (ONNX_ARTIFACT,), Path(tmp))[ONNX_ARTIFACT]
            if path is None:
                return _no_onnx(
                    f"--model {model_ref} has no ONNX export: not a model registered by this pipeline", required
                )
            return OnnxSegmenter.load(path, device)
    path = Path(model_ref)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ModelError(f"--model {model_ref}: no such ONNX file")
        return OnnxSegmenter.load(path, device)
    if not path.is_file():
        return None  # the PyTorch backend names the missing checkpoint
    onnx_file = path.parent / ONNX_MODEL.name
    if not onnx_file.is_file():
        return _no_onnx(f"no ONNX export beside {model_ref} (run the evaluate stage)", required)
    segmenter = OnnxSegmenter.load(onnx_file, device)
    if segmenter.checkpoint_sha256 != sha256_file(path):
        return _no_onnx(
            f"{onnx_file} was exported from another checkpoint than {model_ref} (run the evaluate stage)", required
        )
    return segmenter


def load_segmenter(model_ref: str, *, threshold: float | None, device: str, backend: str | None = None) -> Segmenter:
    """The model behind ``model_ref`` (checkpoint, ``.onnx`` file or MLflow URI) on ``backend``;
    None means DEFAULT_BACKEND where the model has an ONNX export, else PyTorch. ``threshold``
    overrides the evaluated one of a binary model."""
    onnx_file = model_ref.endswith(".onnx")
    if backend == "torch" and onnx_file:
        raise ModelError(f"--model {model_ref}: an ONNX file runs with --backend onnxruntime")
    if (backend or DEFAULT_BACKEND) == "onnxruntime":
        segmenter = _onnx_segmenter(model_ref, device, required=backend == "onnxruntime" or onnx_file)
        if segmenter is not None:
            # --threshold only means something to a binary model; a multi-class one takes the top class.
            keep = threshold is None or not segmenter.classes.binary
            return segmenter if keep else replace(segmenter, threshold=threshold)
    # Imported only when PyTorch runs the model: the onnxruntime backend never loads it.
    from .torch_backend import load_predictor

    return load_predictor(model_ref, threshold=threshold, device=device)


def _planned_outputs(files: list[Path], suffixes: list[str]) -> list[dict[str, str]]:
    """The output names of each file, in order, given before any is decoded: a file that turns out
    not to decode keeps its names, so the names never depend on which files are readable."""
    used: set[str] = set()
    return [_output_names(path.stem, suffixes, used) for path in files]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def refuse_overwriting_inputs(files: list[Path], out_dir: Path, outputs: list[dict[str, str]]) -> None:
    """Refuse, before anything is written, any output that is an input file: the same path once
    symbolic links and ``..`` are resolved, or (for a file already there) the same file, such as a
    hard link. ``--out`` the input folder, a link to it or a parent of a searched folder all end
    here when a name meets an input's."""
    inputs = {path.resolve(): path for path in files}
    by_identity = {identity: path for path in files if (identity := _identity(path)) is not None}
    folder = out_dir.resolve()
    clashes: list[tuple[Path, str]] = []
    for names in outputs:
        for name in names.values():
            target = folder / name
            hit = inputs.get(target.resolve()) or (by_identity.get(_identity(target)) if target.exists() else None)
            if hit is not None:
                clashes.append((hit, name))
    if clashes:
        (source, name), more = clashes[0], len(clashes) - 1
        others = f" (and {more} more input file{'s' * (more > 1)})" if more else ""
        raise DataError(
            f"--out {out_dir}: its {name} would replace the input file {source}{others}; "
            "nothing was written: choose an --out folder that holds no input images"
        )


def output_suffixes(predictor: Segmenter, *, with_overlay: bool, with_probabilities: bool) -> list[str]:
    return [
        "",
        *(["_overlay"] if with_overlay else []),
        *(soft_mask_suffixes(predictor.classes) if with_probabilities else []),
    ]


def predict_files(
    predictor: Segmenter,
    files: list[Path],
    out_dir: Path,
    *,
    batch_size: int = 8,
    with_overlay: bool = False,
    with_probabilities: bool = False,
) -> tuple[list[Path], list[str]]:
    """Write ``<stem>.png`` masks (original size; 0/255 for binary, class ids otherwise) into ``out_dir``,
    with ``with_probabilities`` also 8-bit soft masks; bad files are reported, not fatal: the others
    still get their masks. Refuses (DataError, nothing written) when any output would replace an input."""
    written: list[Path] = []
    failures: list[str] = []
    suffixes = output_suffixes(predictor, with_overlay=with_overlay, with_probabilities=with_probabilities)
    outputs = _planned_outputs(files, suffixes)
    refuse_overwriting_inputs(files, out_dir, outputs)
    progress = tqdm(total=len(files), desc="predict", unit="image")

    def decoded() -> Iterator[tuple[int, np.ndarray]]:
        for index, path in enumerate(files):
            try:
                yield index, decode_image(path.read_bytes(), path)
            except (DataError, OSError) as exc:
                failures.append(f"{path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
                progress.update(1)

    for batch in image_batches(decoded(), batch_size):
        for (index, image), probabilities in zip(
            batch, predictor.probabilities([image for _, image in batch]), strict=True
        ):
            names = outputs[index]
            classes_map = class_map(probabilities, predictor.threshold)
            write_png(out_dir / names[""], predictor.mask_values(classes_map))
            if with_overlay:
                write_png(out_dir / names["_overlay"], overlay(image, classes_map, predictor.classes))
            if with_probabilities:
                for suffix, soft in soft_masks(probabilities, predictor.classes).items():
                    write_png(out_dir / names[suffix], soft)
            written.append(out_dir / names[""])
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
    backend: str | None = None,
    with_probabilities: bool = False,
) -> int:
    files = list(expand_inputs(inputs))
    if not files:
        raise DataError(f"no images found in {' '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"--out {out_dir}: cannot create the folder ({exc.strerror}); choose another") from None
    predictor = load_segmenter(model_ref, threshold=threshold, device=device, backend=backend)
    written, failures = predict_files(
        predictor,
        files,
        out_dir,
        batch_size=batch_size,
        with_overlay=with_overlay,
        with_probabilities=with_probabilities,
    )
    rule = (
        f"threshold {predictor.threshold:g}" if predictor.classes.binary else f"top class of {predictor.classes.count}"
    )
    tta = ", flip TTA" if predictor.tta else ""
    print(f"predict: wrote {len(written)} mask(s) to {out_dir} ({rule}{tta}, {predictor.backend})")
    for failure in failures:
        print(f"predict: skipped {failure}")
    return 1 if failures else 0
