"""The exported model (``models/model.onnx``) run with onnxruntime: no PyTorch needed.

The file is self-describing. Its input is ``image``, uint8 RGB photos N x H x W x 3 (NHWC,
as NumPy, OpenCV and PIL hold them) with H and W any multiple of 32; the ImageNet
normalisation is inside the graph. Its output is ``probabilities``, float32 N x C x H x W:
C = 1, the sigmoid foreground probability, for a binary model; one softmax channel per class
otherwise. Flip TTA, when the model was evaluated with it, is inside the graph too. The
file's metadata (every value JSON) says how to use it, read by ``settings.read_description``:
``threshold``, ``classes``, ``palette``, ``image_size`` (the side the model was trained and
evaluated at), ``resize`` (how a photo is brought to that side: ``pipeline/core/resizing.py``),
``tta`` and the ``checkpoint_sha256`` it was exported from; ``opset``,
``exporter``, ``input`` and ``output`` describe it for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from ..core.errors import ModelError
from .segmenter import Segmenter
from .settings import read_description

# The registered version's artifact that holds the file (pipeline/register/registry.py).
ONNX_ARTIFACT = "onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
INPUT_CONTRACT = (
    "image: uint8 RGB, N x H x W x 3 (NHWC), H and W multiples of 32; ImageNet normalisation is inside the graph"
)
OUTPUT_CONTRACT = (
    "probabilities: float32 N x C x H x W; C = 1 (sigmoid, the foreground) for two classes, "
    "else one softmax channel per class"
)


def session_providers(device: str) -> list[str]:
    """onnxruntime's execution providers for ``--device``: CUDA where this onnxruntime has it."""
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelError(
            "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), or use --backend torch"
        )
    cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


@dataclass(frozen=True)
class OnnxSegmenter(Segmenter):
    backend: ClassVar[str] = "onnxruntime"
    session: ort.InferenceSession
    checkpoint_sha256: str

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> OnnxSegmenter:
        try:
            session = ort.InferenceSession(str(path), providers=session_providers(device))
        except Exception as exc:  # onnxruntime raises its own types for missing, foreign or broken files
            raise ModelError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        description = read_description(session, path)
        return cls(
            image_size=description.image_size,
            resize=description.resize,
            threshold=description.settings.threshold,
            tta=description.settings.tta,
            classes=description.classes,
            session=session,
            checkpoint_sha256=description.settings.checkpoint_sha256,
        )

    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
