"""Segment a photo with an exported model alone: NumPy, onnxruntime and OpenCV, no PyTorch.

    python examples/onnx_client.py models/model.onnx photo.jpg --out mask.png --overlay overlay.png

Everything needed besides the photo is in the file's metadata: the side the model was trained
at and how photos were resized to it (``resize``), the threshold, the class names and colours,
read with the package's one reader (``pipeline.serve.settings.read_description``, which imports
no PyTorch). The graph takes uint8 RGB N x H x W x 3 (H and
W multiples of 32) and returns probabilities N x C x H x W: C = 1 (the foreground) for a binary
model, one channel per class otherwise. The mask is written at the photo's size: 0/255 for a
binary model, the class id of each pixel otherwise.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import onnxruntime as ort

from pipeline.core.errors import ModelError
from pipeline.core.resizing import at_network_scale, pad_to, padded_shape
from pipeline.serve.settings import ModelDescription, read_description

# For classes without a palette colour.
DEFAULT_COLOUR = (255, 64, 64)


def segment(session: ort.InferenceSession, model: ModelDescription, rgb: np.ndarray) -> np.ndarray:
    """H x W class ids for an RGB photo of any size."""
    # At the network's scale as the model was trained (squashed to the square, or its longest
    # side to image_size), mirrored out to multiples of 32, and that padding cut off again.
    content = at_network_scale(rgb, model.image_size, model.resize)
    batch = pad_to(content, padded_shape(content.shape[:2]))[None]
    probabilities = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    probabilities = probabilities[:, : content.shape[0], : content.shape[1]]
    # Back to the photo's size as probabilities, then cut: smoother edges than resizing a class map.
    height, width = rgb.shape[:2]
    probabilities = cv2.resize(probabilities.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)
    if probabilities.ndim == 2:
        return (probabilities >= model.settings.threshold).astype(np.uint8)
    return probabilities.argmax(axis=2).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file exported by the pipeline (models/model.onnx)")
    parser.add_argument("photo")
    parser.add_argument("--out", required=True, help="the mask PNG to write")
    parser.add_argument("--overlay", help="also write the photo with each class tinted in its colour")
    args = parser.parse_args()

    try:
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own types for missing or broken files: one line, not a traceback
        print(f"{args.model}: onnxruntime cannot load it ({str(exc).splitlines()[0][:300]})", file=sys.stderr)
        return 1
    try:
        model = read_description(session, args.model)
    except ModelError as exc:  # not exported by the pipeline
        print(exc, file=sys.stderr)
        return 1
    bgr = cv2.imread(args.photo, cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"{args.photo}: cannot be read as an image", file=sys.stderr)
        return 1
    classes_map = segment(session, model, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    names = model.classes.names
    cv2.imwrite(args.out, classes_map * 255 if len(names) == 2 else classes_map)
    if args.overlay:
        palette = model.classes.palette or [DEFAULT_COLOUR] * len(names)
        tinted = bgr.astype(np.float32)
        for class_id in range(1, len(names)):
            where = classes_map == class_id
            tinted[where] = 0.5 * tinted[where] + 0.5 * np.array(palette[class_id][::-1], np.float32)  # RGB -> BGR
        cv2.imwrite(args.overlay, tinted.astype(np.uint8))
    shares = ", ".join(f"{name} {np.mean(classes_map == index):.1%}" for index, name in enumerate(names) if index)
    print(f"{args.photo}: {shares} of the pixels -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
