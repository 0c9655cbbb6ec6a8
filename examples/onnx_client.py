"""Segment a photo with an exported model alone: NumPy, onnxruntime and OpenCV, no PyTorch.

    python examples/onnx_client.py models/model.onnx photo.jpg --out mask.png --overlay overlay.png

Everything needed besides the photo is in the file's metadata: the side the model was trained
at, the threshold, the class names and colours. The graph takes uint8 RGB N x H x W x 3 (H and
W multiples of 32) and returns probabilities N x C x H x W: C = 1 (the foreground) for a binary
model, one channel per class otherwise. The mask is written at the photo's size: 0/255 for a
binary model, the class id of each pixel otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort

# For classes without a palette colour.
DEFAULT_COLOUR = (255, 64, 64)


def segment(session: ort.InferenceSession, metadata: dict, rgb: np.ndarray) -> np.ndarray:
    """H x W class ids for an RGB photo of any size."""
    size = metadata["image_size"]
    batch = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)[None]
    probabilities = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    # Back to the photo's size as probabilities, then cut: smoother edges than resizing a class map.
    height, width = rgb.shape[:2]
    probabilities = cv2.resize(probabilities.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)
    if probabilities.ndim == 2:
        return (probabilities >= metadata["threshold"]).astype(np.uint8)
    return probabilities.argmax(axis=2).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file exported by the pipeline (models/model.onnx)")
    parser.add_argument("photo")
    parser.add_argument("--out", required=True, help="the mask PNG to write")
    parser.add_argument("--overlay", help="also write the photo with each class tinted in its colour")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    metadata = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    bgr = cv2.imread(args.photo, cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"{args.photo}: cannot be read as an image", file=sys.stderr)
        return 1
    classes_map = segment(session, metadata, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    names = metadata["classes"]
    cv2.imwrite(args.out, classes_map * 255 if len(names) == 2 else classes_map)
    if args.overlay:
        palette = metadata["palette"] or [DEFAULT_COLOUR] * len(names)
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
