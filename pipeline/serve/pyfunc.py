"""The registered model: an MLflow pyfunc, logged as code, that takes images and returns class maps.

MLflow runs this file to load the model (models-from-code), so imports are absolute and the
last line hands MLflow the model object. It runs the verified ONNX export logged beside it with
onnxruntime, so serving needs neither PyTorch nor smp: nothing imported here may import torch
(``tests/test_serving.py`` serves with torch unimportable). It accepts any batch and any image
size, like ``predict``.

Request bodies ``mlflow models serve`` accepts (POST /invocations, JSON):

- ``{"inputs": ["<base64 of a JPEG/PNG/... file>", ...]}`` or
  ``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}``:
  each answer is the mask as a base64-encoded PNG at the image's size: for a binary model
  0 background, 255 foreground; for a multi-class model the class id of each pixel
  (0 background, 1 the first class after it, ... in the order of ``data.classes``);
- ``{"inputs": <N x H x W x 3 (or 4, or no channel axis) pixel values 0-255>}``:
  each answer is an H x W array of the same values.

Anything else is answered with HTTP 400 and a one-line message saying what is wrong with which
image, quoting at most ``QUOTED_CHARS`` characters of what was sent: pixel values that are not
whole numbers 0-255 (NaN and infinity included), or not numbers at all, are refused. Images
larger than ``MAX_IMAGE_PIXELS`` (pipeline/core/images.py) are refused from their header, before
decoding; a request is decoded and run ``INFERENCE_BATCH`` images at a time, so its memory does
not grow with its image count.

Under ``mlflow models serve`` (the scoring server imported before the model is loaded) two more
bounds hold: a request body larger than ``$SERVE_MAX_REQUEST_MB`` (default
``DEFAULT_MAX_REQUEST_MB``) is refused before MLflow parses it, and a request stops, between two
images, once it has run for ``DEADLINE_SHARE`` of the server's request timeout
(``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, ``mlflow models serve --timeout``), answered with
HTTP 504: the server's own timeout answers the client but leaves the work running.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE

from pipeline.core.errors import DataError
from pipeline.core.images import INFERENCE_BATCH, MAX_IMAGE_PIXELS, decode_image
from pipeline.serve.onnx_backend import ONNX_ARTIFACT, OnnxSegmenter
from pipeline.serve.segmenter import image_batches

IMAGE_COLUMN = "image"
# The most of a request (or of MLflow's own message about it) an error message quotes.
QUOTED_CHARS = 200
# Request bodies above this many MiB are refused unread by MLflow: parsed, a body takes several
# times its size (a JSON string becomes a NumPy array of 4 bytes per character). 20 MiB holds
# two 5 MB phone photos in base64; a client sends more photos in more requests.
MAX_REQUEST_ENV = "SERVE_MAX_REQUEST_MB"
DEFAULT_MAX_REQUEST_MB = 20
# The part of the scoring server's request timeout a request may run before it stops.
DEADLINE_SHARE = 0.9
# When the request being answered must stop (time.monotonic()); None outside the scoring server.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class BadPayload(MlflowException):
    """A request the model cannot answer; MLflow's server turns the error code into HTTP 400.

    The message is fixed once made: MLflow's scoring server rewrites a model's error message to
    ``Failed to predict data '<the whole request>'``, which would send megabytes of base64 back
    (and into its logs)."""

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE):
        super().__init__(message, error_code=error_code)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def shortened(text: str, limit: int = QUOTED_CHARS) -> str:
    """The first line of ``text``, cut to ``limit`` characters (saying how long it was)."""
    line = text.strip().split("\n", 1)[0]
    if len(line) <= limit and len(line) == len(text.strip()):
        return line
    return f"{line[:limit]}... ({len(text):,} characters in all)"


def _as_array(item: object, where: str) -> np.ndarray:
    try:
        return np.asarray(item)
    except (ValueError, TypeError):  # ragged rows: numpy refuses them
        raise BadPayload(f"{where}: pixel rows or columns of different lengths") from None


def _pixels(array: np.ndarray, where: str) -> np.ndarray:
    """An RGB uint8 image from a pixel array of shape HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped):
    whole numbers 0-255, as integers or floats."""
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if not numeric or array.ndim not in (2, 3):
        kind = array.dtype if numeric or array.dtype.kind in "biufc" else "non-numeric values"
        raise BadPayload(f"{where}: expected pixel values 0-255 of shape HxW or HxWxC, got {kind} {array.shape}")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise BadPayload(f"{where}: expected 1, 3 or 4 channels, got {array.shape[2]}")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise BadPayload(
            f"{where}: {array.shape[1]}x{array.shape[0]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,}"
        )
    if array.size == 0:
        raise BadPayload(f"{where}: no pixels")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise BadPayload(f"{where}: pixel values must be whole numbers 0-255, got NaN or infinity")
        if not np.array_equal(array, np.trunc(array)):
            raise BadPayload(f"{where}: pixel values must be whole numbers 0-255, got fractions (send 0-255, not 0-1)")
    if array.min() < 0 or array.max() > 255:
        raise BadPayload(f"{where}: pixel values must lie in 0-255, got {array.min():g} to {array.max():g}")
    image = array.astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])


def _decoded(item: str | bytes, where: str) -> np.ndarray:
    try:
        data = base64.b64decode(item, validate=True) if isinstance(item, str) else bytes(item)
    except (binascii.Error, ValueError):
        raise BadPayload(f"{where}: not valid base64") from None
    if not data:
        raise BadPayload(f"{where}: empty (no image bytes)")
    try:
        return decode_image(data, where)
    except DataError as exc:
        raise BadPayload(str(exc)) from None


def _listed(names: list) -> str:
    shown = [str(name)[:40] for name in names[:5]]
    return ", ".join(shown) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def request_images(model_input: object) -> tuple[list, bool]:
    """The items of a request (not yet decoded), and whether they came encoded (so answers are encoded too)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise BadPayload(
                f"expected a column {IMAGE_COLUMN!r} of base64-encoded images, "
                f"got columns {_listed(list(model_input.columns))}"
            )
        items = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, np.ndarray) and not np.issubdtype(model_input.dtype, np.number):
        items = list(model_input.reshape(-1)) if model_input.ndim <= 1 else None
        if items is None:
            raise BadPayload(f"expected a list of base64-encoded images, got an array of shape {model_input.shape}")
    elif isinstance(model_input, np.ndarray):
        if model_input.ndim not in (3, 4):
            raise BadPayload(f"expected a batch of images, N x H x W (x C), got shape {model_input.shape}")
        items = list(model_input)
    elif isinstance(model_input, (list, tuple)):
        items = list(model_input)
    else:
        raise BadPayload(f"expected images as base64 strings or pixel arrays, got {type(model_input).__name__}")
    if not items:
        raise BadPayload("the request holds no images")
    encoded = [isinstance(item, (str, bytes)) for item in items]
    if any(encoded) and not all(encoded):
        raise BadPayload("mix of encoded images and pixel arrays in one request; send one kind")
    return items, all(encoded)


def read_image(item: object, index: int, encoded: bool) -> np.ndarray:
    """One item of a request as an RGB uint8 image."""
    where = f"image {index}"
    return _decoded(item, where) if encoded else _pixels(_as_array(item, where), where)


def _check_deadline(index: int, count: int) -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
        raise BadPayload(
            f"stopped before image {index} of {count}: the request ran into the server's limit of {timeout} s "
            "(mlflow models serve --timeout); send fewer or smaller images per request",
            error_code=DEADLINE_EXCEEDED,
        )


def max_request_bytes() -> int:
    """``$SERVE_MAX_REQUEST_MB`` (a positive number of MiB) in bytes, else DEFAULT_MAX_REQUEST_MB's."""
    value = os.environ.get(MAX_REQUEST_ENV, "")
    try:
        megabytes = float(value) if value.strip() else DEFAULT_MAX_REQUEST_MB
    except ValueError:
        megabytes = DEFAULT_MAX_REQUEST_MB
    if not megabytes > 0:
        megabytes = DEFAULT_MAX_REQUEST_MB
    return int(megabytes * 2**20)


def bounded(invocations: Callable) -> Callable:
    """The scoring server's ``invocations(data, content_type, model, input_schema)`` with this
    model's bounds: a body over ``max_request_bytes()`` refused before it is parsed, the deadline
    of the request set for ``predict``, and MLflow's own error messages (which can quote the whole
    body, as its refusal of malformed JSON does) cut to one short line."""
    if getattr(invocations, "bounded", False):
        return invocations

    @functools.wraps(invocations)
    def bounded_invocations(data, content_type, model, input_schema):
        limit = max_request_bytes()
        if len(data) > limit:
            raise BadPayload(
                f"request of {len(data) / 2**20:.1f} MiB is larger than the limit of {limit / 2**20:g} MiB "
                f"({MAX_REQUEST_ENV} on the server); send fewer or smaller images per request"
            )
        timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
        token = _deadline.set(time.monotonic() + DEADLINE_SHARE * timeout if timeout else None)
        try:
            return invocations(data, content_type, model, input_schema)
        except BadPayload:
            raise
        except MlflowException as exc:
            exc.message = shortened(exc.message)
            if "stack_trace" in exc.json_kwargs:
                exc.json_kwargs["stack_trace"] = exc.json_kwargs["stack_trace"][-2000:]
            raise
        finally:
            _deadline.reset(token)

    bounded_invocations.bounded = True
    return bounded_invocations


def _bound_the_scoring_server() -> None:
    """Wrap ``mlflow models serve``'s request handling (looked up by name for each request) when
    this process is that server: its app imports the scoring server before loading the model."""
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    if server is not None and callable(getattr(server, "invocations", None)):
        server.invocations = bounded(server.invocations)


def encode_png(mask: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError("OpenCV could not encode a mask as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


class SegmentationModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # The threshold and TTA are in the file's metadata, as evaluate exported it.
        self.predictor = OnnxSegmenter.load(Path(context.artifacts[ONNX_ARTIFACT]))
        _bound_the_scoring_server()

    # MLflow derives a signature from a list[...] annotation and then converts or rejects the
    # other payload forms before they get here. np.ndarray (what the scoring server makes of
    # {"inputs": ...}) is one of the annotations it derives none from and passes every form
    # through unchanged: DataFrames from dataframe_split and Python lists too, which
    # request_images checks itself. registry.register_model states the signature instead.
    def predict(self, context, model_input: np.ndarray, params=None) -> list:
        items, encoded = request_images(model_input)

        def decoded():
            for index, item in enumerate(items):
                _check_deadline(index, len(items))
                yield index, read_image(item, index, encoded)

        answers = []
        for batch in image_batches(decoded(), INFERENCE_BATCH):
            masks = self.predictor.masks([image for _, image in batch])
            answers += [encode_png(mask) for mask in masks] if encoded else masks
        return answers


mlflow.models.set_model(SegmentationModel())
