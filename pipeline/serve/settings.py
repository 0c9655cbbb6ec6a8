"""How an exported model is to be run, as its ONNX file records it: the one record.

evaluate writes these values into the metadata of ``models/model.onnx`` (every value JSON);
``read_description`` is the one reader, used by both predict backends, the served model and
``examples/onnx_client.py``. No PyTorch here: the served model imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..core.classes import ClassSpec
from ..core.errors import ModelError
from ..core.resizing import resize_mode

# The metadata layout this version writes and reads; a file of another layout is refused by name.
FORMAT = "unet-pipeline/onnx-v1"
# What running the model needs from the metadata; the file also describes itself for people
# (exporter, opset, input, output: pipeline/evaluate/export.py).
REQUIRED_METADATA = ("format", "threshold", "tta", "classes", "palette", "image_size", "resize", "checkpoint_sha256")
# Network inputs are multiples of 32 (five poolings); above this side no model of this pipeline runs.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class InferenceSettings:
    """The probability cut-off and TTA a checkpoint was evaluated with, and so must be used with,
    and the SHA-256 of that checkpoint. Multi-class models have no cut-off (``threshold`` None):
    each pixel takes its top class."""

    threshold: float | None
    tta: bool
    checkpoint_sha256: str

    def __post_init__(self) -> None:
        # These come from files anyone may have written: check them.
        threshold_ok = self.threshold is None or (
            isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool) and 0 < self.threshold < 1
        )
        if not threshold_ok or not isinstance(self.tta, bool) or not isinstance(self.checkpoint_sha256, str):
            raise ValueError(
                f"threshold must be null or in (0, 1), tta true or false, checkpoint_sha256 a string; got {self}"
            )


# What a checkpoint runs with when no evaluation of it exists (`predict --model models/best.pt`
# before the evaluate stage ran): the untuned cut-off, no TTA.
UNEVALUATED = InferenceSettings(0.5, False, "")


@dataclass(frozen=True)
class ModelDescription:
    """Everything besides the graph that running an exported model needs."""

    settings: InferenceSettings
    classes: ClassSpec
    image_size: int  # the side the model was trained and evaluated at
    resize: str  # how photos were brought to it (data.resize: pipeline/core/resizing.py)

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata entries (JSON values) that ``read_description`` reads back."""
        values = {
            "format": FORMAT,
            "image_size": self.image_size,
            "resize": self.resize,
            "threshold": self.settings.threshold if self.classes.binary else None,
            "tta": self.settings.tta,
            "classes": list(self.classes.names),
            "palette": self.classes.to_dict()["palette"],
            "checkpoint_sha256": self.settings.checkpoint_sha256,
        }
        return {key: json.dumps(value) for key, value in values.items()}


def _parsed(stored: dict[str, str], where: str) -> ModelDescription:
    try:
        values: dict[str, Any] = {key: json.loads(stored[key]) for key in REQUIRED_METADATA}
    except (KeyError, ValueError):
        missing = [key for key in REQUIRED_METADATA if key not in stored]
        lacking = f"lacks {', '.join(missing)}" if missing else "holds values that are not JSON"
        raise ModelError(f"{where}: not an ONNX model exported by this pipeline (its metadata {lacking})") from None
    if values["format"] != FORMAT:
        raise ModelError(f"{where}: exported in format {str(values['format'])[:60]!r}; this version reads {FORMAT!r}")
    size = values["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= MAX_IMAGE_SIZE or size % 32:
        raise ModelError(f"{where}: image_size {str(size)[:40]} in its metadata is not a multiple of 32 in 32-4096")
    resize = resize_mode(values["resize"], where, ModelError)
    try:
        classes = ClassSpec.of(values["classes"], values["palette"])
        if classes.count < 2 or not all(isinstance(name, str) for name in classes.names):
            raise ValueError("at least two class names")
        threshold = values["threshold"] if classes.binary else None
        settings = InferenceSettings(threshold, values["tta"], values["checkpoint_sha256"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: its metadata does not describe a model of this pipeline ({exc})") from None
    if classes.binary and threshold is None:
        raise ModelError(f"{where}: a binary model without a threshold in its metadata")
    return ModelDescription(settings, classes, size, resize)


def read_description(model: Path | ort.InferenceSession, where: Path | str | None = None) -> ModelDescription:
    """How the exported model ``model`` (a file, or a session already open on one) is to be run.

    ``where`` names it in errors (default: the file). Refuses, naming the file, anything this
    pipeline did not export."""
    if isinstance(model, ort.InferenceSession):
        return _parsed(model.get_modelmeta().custom_metadata_map, str(where or "the ONNX model"))
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for missing, foreign or broken files
        raise ModelError(f"{where or model}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    return _parsed(session.get_modelmeta().custom_metadata_map, str(where or model))
