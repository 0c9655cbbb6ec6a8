"""The evaluated model as ONNX (``models/model.onnx``), verified against PyTorch before it is kept.

The graph is the whole model as evaluated: uint8 RGB photos in (NHWC), the ImageNet
normalisation, the network, flip TTA when evaluate used it, and the sigmoid or softmax, so
probabilities come out. Batch, height and width are dynamic (any multiple of 32). The
metadata carries what else a client needs (see ``pipeline/serve/onnx_backend.py``).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ..core.classes import ClassSpec
from ..core.errors import ModelError
from ..core.files import atomic_path
from ..model.inputs import eval_transform
from ..model.outputs import class_probabilities, predict_logits, predicted_classes
from ..serve.onnx_backend import INPUT_CONTRACT, INPUT_NAME, OUTPUT_CONTRACT, OUTPUT_NAME, OnnxSegmenter
from ..serve.settings import InferenceSettings, ModelDescription
from .predictions import Batch

# 17 runs on every current onnxruntime (also the web and mobile builds) and TensorRT 8.6+.
OPSET = 17
EXPORTER = f"torch.onnx.export (TorchScript), torch {torch.__version__.split('+')[0]}"
# Export fails below this share of equal test pixels between onnxruntime and PyTorch fp32.
MIN_MASK_AGREEMENT = 0.999
# The example the graph is traced with: batch 2 and a non-square shape, so nothing is
# specialised to one image or to square inputs; the axes are declared dynamic anyway.
EXAMPLE_SHAPE = (2, 64, 96, 3)


class ExportedNetwork(nn.Module):
    """uint8 RGB N x H x W x 3 in, probabilities N x C x H x W out: what the ONNX file computes."""

    def __init__(self, model: nn.Module, classes: ClassSpec, tta: bool):
        super().__init__()
        self.model, self.classes, self.tta = model, classes, tta
        # The same statistics as eval_transform(), which feeds the network in PyTorch.
        normalize = eval_transform().transforms[0]
        scale = normalize.max_pixel_value
        self.register_buffer("mean", torch.tensor(normalize.mean).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(normalize.std).view(1, 3, 1, 1) * scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        normalised = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return class_probabilities(predict_logits(self.model, normalised, self.tta), self.classes)


@dataclass(frozen=True)
class ExportCheck:
    """onnxruntime against PyTorch fp32 on the test split: written to metrics/export.json."""

    max_abs_probability_diff: float
    mask_agreement: float  # share of test pixels whose class is the same either way
    images: int
    pixels: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def run_metrics(self) -> dict[str, float]:
        return {
            "export_max_abs_probability_diff": self.max_abs_probability_diff,
            "export_mask_agreement": self.mask_agreement,
        }

    def summary(self) -> str:
        return (
            f"mask agreement {self.mask_agreement:.4%} of {self.pixels} test pixels, "
            f"max probability difference {self.max_abs_probability_diff:.2e}"
        )


def metadata(settings: InferenceSettings, classes: ClassSpec, image_size: int, resize: str) -> dict[str, str]:
    """How to run the file (``ModelDescription.metadata``, read back by predict and serving),
    and what it is, for people."""
    about = {"exporter": EXPORTER, "opset": OPSET, "input": INPUT_CONTRACT, "output": OUTPUT_CONTRACT}
    return {
        **{key: json.dumps(value) for key, value in about.items()},
        **ModelDescription(settings, classes, image_size, resize).metadata(),
    }


def onnx_graph(
    model: nn.Module, classes: ClassSpec, settings: InferenceSettings, image_size: int, resize: str
) -> onnx.ModelProto:
    # Traced on the CPU, from a copy: the model itself stays on its device, scoring the test split.
    network = ExportedNetwork(copy.deepcopy(model).cpu().eval(), classes, settings.tta).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer's notes on smp's input-size checks, which run once at trace time, and the
        # TorchScript exporter's deprecation notice (docs/design.md says why it is used).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            network,
            (torch.zeros(EXAMPLE_SHAPE, dtype=torch.uint8),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 1: "height", 2: "width"},
                OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            },
        )
    graph = onnx.load_model_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, metadata(settings, classes, image_size, resize))
    return graph


# How many test images the export is checked on, whole batches from the first: a check of the
# exporter, whose faults show on any image, not a score. The bound keeps evaluate's memory flat
# however large the test split: running onnxruntime between PyTorch's batches fragments the C
# heap, which grows with every batch checked (docs/performance.md, "Evaluate's memory").
EXPORT_CHECK_IMAGES = 32


class ExportComparison:
    """onnxruntime against PyTorch fp32, batch by batch: the file at ``path`` is run on the
    photos of each batch until EXPORT_CHECK_IMAGES were, and compared with the probabilities
    PyTorch gave for them."""

    def __init__(self, path: Path, threshold: float | None):
        self.segmenter, self.threshold = OnnxSegmenter.load(path, device="cpu"), threshold
        self.worst, self.equal, self.images, self.pixels = 0.0, 0, 0, 0

    def update(self, batch: Batch) -> None:
        if self.images >= EXPORT_CHECK_IMAGES:
            return
        got = torch.from_numpy(self.segmenter.network_probabilities(batch.photos))
        want = batch.probabilities
        self.worst = max(self.worst, float((got - want).abs().max()))
        self.equal += int((predicted_classes(got, self.threshold) == predicted_classes(want, self.threshold)).sum())
        self.images += want.shape[0]
        self.pixels += want.shape[0] * want.shape[2] * want.shape[3]

    def check(self) -> ExportCheck:
        return ExportCheck(self.worst, self.equal / self.pixels, self.images, self.pixels)


@contextmanager
def verified_export(
    model: nn.Module, path: Path, settings: InferenceSettings, classes: ClassSpec, image_size: int, resize: str
) -> Iterator[ExportComparison]:
    """Export ``model`` to ``path``; the block feeds the comparison the test split's batches, and
    ``path`` is written only if onnxruntime agreed with PyTorch on them; else this raises, with the numbers."""
    graph = onnx_graph(model, classes, settings, image_size, resize)
    with atomic_path(path) as tmp:
        onnx.save(graph, tmp)
        comparison = ExportComparison(tmp, settings.threshold)
        yield comparison
        check = comparison.check()
        if check.mask_agreement < MIN_MASK_AGREEMENT:
            raise ModelError(
                f"the ONNX export disagrees with PyTorch fp32: {check.summary()} "
                f"(at least {MIN_MASK_AGREEMENT:.1%} must agree); {path} was not written and nothing was registered"
            )
